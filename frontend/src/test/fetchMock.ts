import { vi } from 'vitest';
import { storeToken } from '../services/api/client';

export interface Call {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: unknown;
}

type Handler = (call: Call) => Response | Promise<Response>;

export const json = (status: number, body: unknown, headers: Record<string, string> = {}): Response =>
  new Response(status === 204 ? null : JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers },
  });

/** Replace fetch with `handler`, recording every call (unit tests only; e2e uses the real stack). */
export function mockFetch(handler: Handler): Call[] {
  const calls: Call[] = [];
  vi.stubGlobal(
    'fetch',
    vi.fn(async (input: RequestInfo | URL, init: RequestInit = {}) => {
      const headers: Record<string, string> = {};
      new Headers(init.headers).forEach((value, key) => {
        headers[key] = value;
      });
      const raw = typeof init.body === 'string' ? init.body : undefined;
      let body: unknown = raw;
      if (raw !== undefined && headers['content-type'] === 'application/json') body = JSON.parse(raw);
      const call: Call = { method: init.method ?? 'GET', url: String(input), headers, body };
      calls.push(call);
      return handler(call);
    }),
  );
  return calls;
}

export function signIn(): void {
  storeToken('test-token', 3600);
}

type SendEvent = (data: Record<string, unknown>, id?: number) => void;

/** A live text/event-stream response for /customer/events; `twin()` sends one twin event,
 * `presence()` one presence event. */
export function eventStream(): { response: Response; twin: SendEvent; presence: SendEvent; shadow: SendEvent } {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  const encoder = new TextEncoder();
  let nextId = 1;
  controller.enqueue(encoder.encode('retry: 2000\n: stream\n\n'));
  return {
    response: new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }),
    twin: (data, id = nextId++) => {
      controller.enqueue(encoder.encode(`id: ${id}\nevent: twin\ndata: ${JSON.stringify(data)}\n\n`));
    },
    presence: (data, id = nextId++) => {
      controller.enqueue(encoder.encode(`id: ${id}\nevent: presence\ndata: ${JSON.stringify(data)}\n\n`));
    },
    shadow: (data, id = nextId++) => {
      controller.enqueue(encoder.encode(`id: ${id}\nevent: shadow\ndata: ${JSON.stringify(data)}\n\n`));
    },
  };
}
