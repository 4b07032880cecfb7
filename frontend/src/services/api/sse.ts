/**
 * A small Server-Sent Events reader over fetch + ReadableStream.
 *
 * The console's session cookie signs the stream in (same-origin fetch), so no token goes in
 * a header or the URL. Why not EventSource: it does not let us choose Last-Event-ID
 * ourselves, nor tell a 401 from a network error. The parser follows the WHATWG "event
 * stream interpretation" rules.
 */

export interface SseMessage {
  /** The `event:` field, or "message" when there was none. */
  type: string;
  /** The `data:` lines joined with "\n". */
  data: string;
  /** The last `id:` seen so far in the stream (it persists across messages), "" for none. */
  lastEventId: string;
}

/** Incremental parser: feed it text chunks as they arrive, get complete messages back. */
export class SseParser {
  private buffer = '';
  /** The previous chunk ended with "\r": a "\n" starting the next one belongs to it. */
  private skipLeadingNewline = false;
  private data: string[] = [];
  private eventType = '';
  lastEventId = '';
  /** The reconnection delay the server asked for with `retry:`, in milliseconds. */
  retryMs: number | null = null;

  push(chunk: string): SseMessage[] {
    let text = chunk;
    if (this.skipLeadingNewline && text.startsWith('\n')) text = text.slice(1);
    this.skipLeadingNewline = false;
    this.buffer += text;
    const messages: SseMessage[] = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) break;
      // A lone "\r" at the very end may be the first half of "\r\n".
      if (match[0] === '\r' && match.index === this.buffer.length - 1) {
        const line = this.buffer.slice(0, match.index);
        this.buffer = '';
        this.skipLeadingNewline = true;
        this.processLine(line, messages);
        break;
      }
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      this.processLine(line, messages);
    }
    return messages;
  }

  private processLine(line: string, messages: SseMessage[]): void {
    if (line === '') {
      this.dispatch(messages);
      return;
    }
    if (line.startsWith(':')) return; // a comment, e.g. a heartbeat
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'data':
        this.data.push(value);
        break;
      case 'event':
        this.eventType = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retryMs = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  private dispatch(messages: SseMessage[]): void {
    if (this.data.length > 0) {
      messages.push({ type: this.eventType || 'message', data: this.data.join('\n'), lastEventId: this.lastEventId });
    }
    this.data = [];
    this.eventType = '';
  }
}

export type StreamState = 'connecting' | 'live' | 'down';

export interface SseClientOptions {
  url: string;
  /** Called before every (re)connection; null means "do not connect" (no token). */
  getToken: () => string | null;
  onMessage: (message: SseMessage) => void;
  onStateChange?: (state: StreamState, detail?: string) => void;
  /** The server refused the token (401): stop for good. */
  onUnauthorized?: () => void;
  /** Delay before reconnect attempt `attempt` (0-based). Default: 1 s doubling to 30 s, ±20 %. */
  backoffMs?: (attempt: number, serverRetryMs: number | null) => number;
  /** Reconnect when nothing (not even a heartbeat) arrived for this long. Default 45 s. */
  idleTimeoutMs?: number;
  fetchImpl?: typeof fetch;
}

export function defaultBackoff(attempt: number, serverRetryMs: number | null): number {
  const base = Math.max(serverRetryMs ?? 1000, 500);
  const delay = Math.min(30_000, base * 2 ** Math.min(attempt, 10));
  return Math.round(delay * (0.8 + Math.random() * 0.4));
}

/**
 * Keeps one stream open: connects, reads, and on any failure reconnects with back-off,
 * resuming from the last event id. `close()` stops it for good.
 */
export class SseClient {
  private readonly options: SseClientOptions;
  private readonly parser = new SseParser();
  private controller: AbortController | null = null;
  private closed = false;
  private state: StreamState | null = null;
  private wake: (() => void) | null = null;

  constructor(options: SseClientOptions) {
    this.options = options;
    void this.run();
  }

  get lastEventId(): string {
    return this.parser.lastEventId;
  }

  close(): void {
    this.closed = true;
    this.controller?.abort();
    this.wake?.();
  }

  private setState(state: StreamState, detail?: string): void {
    if (this.state === state || this.closed) return;
    this.state = state;
    this.options.onStateChange?.(state, detail);
  }

  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.closed) {
      this.setState('connecting');
      let opened = false;
      let failure = 'the event stream ended';
      try {
        opened = await this.readOnce();
      } catch (error) {
        failure = error instanceof Error ? error.message : String(error);
      }
      if (this.closed) return;
      if (opened) attempt = 0;
      this.setState('down', failure);
      const backoff = this.options.backoffMs ?? defaultBackoff;
      await this.sleep(backoff(attempt, this.parser.retryMs));
      attempt += 1;
    }
  }

  /** One connection; true if it got as far as an open stream. Throws on failure. */
  private async readOnce(): Promise<boolean> {
    const token = this.options.getToken();
    if (token === null) throw new Error('not signed in');
    // Signed in by the session cookie (same-origin): no token in a header or the URL.
    const headers: Record<string, string> = { Accept: 'text/event-stream' };
    if (this.parser.lastEventId) headers['Last-Event-ID'] = this.parser.lastEventId;
    const controller = new AbortController();
    this.controller = controller;
    const fetchImpl = this.options.fetchImpl ?? fetch;
    const response = await fetchImpl(this.options.url, {
      headers,
      signal: controller.signal,
      cache: 'no-store',
      credentials: 'same-origin',
    });
    if (response.status === 401) {
      this.closed = true;
      this.options.onUnauthorized?.();
      throw new Error('the session has expired');
    }
    const contentType = response.headers.get('Content-Type') ?? '';
    if (!response.ok || !contentType.startsWith('text/event-stream') || !response.body) {
      await response.body?.cancel().catch(() => undefined);
      throw new Error(`the event stream is not available (HTTP ${response.status})`);
    }
    this.setState('live');
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const idleMs = this.options.idleTimeoutMs ?? 45_000;
    let idleTimer: ReturnType<typeof setTimeout> | undefined;
    const armIdle = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => controller.abort(), idleMs);
    };
    try {
      armIdle();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        armIdle();
        for (const message of this.parser.push(decoder.decode(value, { stream: true }))) {
          if (this.closed) return true;
          try {
            this.options.onMessage(message);
          } catch (error) {
            console.error('event listener failed', error);
          }
        }
      }
    } catch (error) {
      if (this.closed) return true;
      throw error instanceof Error && error.name === 'AbortError' ? new Error('the event stream went quiet') : error;
    } finally {
      clearTimeout(idleTimer);
      try {
        reader.releaseLock();
      } catch {
        // already released
      }
    }
    return true;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }
}
