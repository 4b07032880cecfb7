import { afterEach, describe, expect, it, vi } from 'vitest';
import { SseClient, SseParser, type SseMessage, type StreamState } from './sse';

describe('SseParser', () => {
  it('parses events with type, id and data, skipping comments and heartbeats', () => {
    const parser = new SseParser();
    const messages = parser.push(
      'retry: 2000\n: stream of tenant t from 5\n\nid: 6\nevent: twin\ndata: {"device_id":"d-1"}\n\n: heartbeat\n\n',
    );
    expect(messages).toEqual([{ type: 'twin', data: '{"device_id":"d-1"}', lastEventId: '6' }]);
    expect(parser.retryMs).toBe(2000);
    expect(parser.lastEventId).toBe('6');
  });

  it('reassembles events split across chunks at any point, including inside \\r\\n', () => {
    const text = 'id: 7\r\nevent: twin\r\ndata: {"a":1}\r\n\r\nid: 8\r\ndata: x\r\n\r\n';
    for (let cut = 1; cut < text.length; cut += 1) {
      const parser = new SseParser();
      const messages = [...parser.push(text.slice(0, cut)), ...parser.push(text.slice(cut))];
      expect(messages, `cut at ${cut}`).toEqual([
        { type: 'twin', data: '{"a":1}', lastEventId: '7' },
        { type: 'message', data: 'x', lastEventId: '8' },
      ]);
    }
  });

  it('joins multi-line data, accepts bare \\r line ends, "field" without colon, and no space after the colon', () => {
    const parser = new SseParser();
    expect(parser.push('data:one\rdata: two\r\r')).toEqual([{ type: 'message', data: 'one\ntwo', lastEventId: '' }]);
    expect(parser.push('data\n\n')).toEqual([{ type: 'message', data: '', lastEventId: '' }]);
  });

  it('does not dispatch an event without data, but keeps its id; ignores ids with NUL and bad retry', () => {
    const parser = new SseParser();
    expect(parser.push('id: 9\nevent: twin\n\n')).toEqual([]);
    expect(parser.lastEventId).toBe('9');
    parser.push('id: 1\0 2\nretry: soon\n\n');
    expect(parser.lastEventId).toBe('9');
    expect(parser.retryMs).toBeNull();
    // The event type does not leak into the next event.
    expect(parser.push('data: y\n\n')).toEqual([{ type: 'message', data: 'y', lastEventId: '9' }]);
  });

  it('holds back an incomplete last line', () => {
    const parser = new SseParser();
    expect(parser.push('data: partial')).toEqual([]);
    expect(parser.push('\n\n')).toEqual([{ type: 'message', data: 'partial', lastEventId: '' }]);
  });
});

/** A text/event-stream response whose body we write to. */
function streamResponse(): { response: Response; write: (text: string) => void; end: () => void } {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  const encoder = new TextEncoder();
  return {
    response: new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }),
    write: (text) => controller.enqueue(encoder.encode(text)),
    end: () => controller.close(),
  };
}

describe('SseClient', () => {
  let client: SseClient | null = null;
  afterEach(() => client?.close());

  it('signs in by the session cookie (no token sent), delivers messages, and resumes with Last-Event-ID after a drop', async () => {
    const streams = [streamResponse(), streamResponse()];
    const requests: Record<string, string>[] = [];
    const fetchImpl = vi.fn(async (_url: RequestInfo | URL, init?: RequestInit) => {
      requests.push(Object.fromEntries(new Headers(init?.headers).entries()));
      const next = streams[requests.length - 1];
      if (!next) throw new TypeError('no more');
      return next.response;
    });
    const messages: SseMessage[] = [];
    const states: StreamState[] = [];
    client = new SseClient({
      url: '/customer/events',
      getToken: () => 'tok',
      onMessage: (message) => messages.push(message),
      onStateChange: (state) => states.push(state),
      backoffMs: () => 5,
      fetchImpl: fetchImpl as unknown as typeof fetch,
    });

    await vi.waitFor(() => expect(states).toContain('live'));
    streams[0]?.write('id: 41\nevent: twin\ndata: {"device_id":"d"}\n\n');
    await vi.waitFor(() => expect(messages).toHaveLength(1));
    streams[0]?.end();

    await vi.waitFor(() => expect(requests).toHaveLength(2));
    expect(requests[0]).toMatchObject({ accept: 'text/event-stream' });
    expect(requests[0]?.authorization).toBeUndefined();
    expect(requests[0]?.['last-event-id']).toBeUndefined();
    expect(requests[1]?.['last-event-id']).toBe('41');
    expect(states.slice(0, 4)).toEqual(['connecting', 'live', 'down', 'connecting']);
  });

  it('treats a non-stream answer as down and retries with back-off; a 401 stops for good', async () => {
    const attempts: number[] = [];
    let unauthorized = false;
    const fetchImpl = vi.fn(async () => {
      attempts.push(Date.now());
      return attempts.length < 3
        ? new Response('{"detail":"nope"}', { status: 503, headers: { 'Content-Type': 'application/json' } })
        : new Response('{"detail":"expired"}', { status: 401 });
    });
    const backoff = vi.fn(() => 5);
    client = new SseClient({
      url: '/customer/events',
      getToken: () => 'tok',
      onMessage: () => undefined,
      onUnauthorized: () => {
        unauthorized = true;
      },
      backoffMs: backoff,
      fetchImpl: fetchImpl as unknown as typeof fetch,
    });
    await vi.waitFor(() => expect(unauthorized).toBe(true));
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(fetchImpl).toHaveBeenCalledTimes(3);
    expect(backoff.mock.calls.map((call) => (call as unknown[])[0])).toEqual([0, 1]);
  });
});
