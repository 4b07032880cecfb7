/**
 * The tenant's live twin changes and device presence (GET /customer/events, SPEC §7 and §8),
 * shared by every page:
 * one stream for the whole console, opened while at least one component listens.
 */
import { clearToken, getToken } from './client';
import type { SyncStatus } from './devices';
import { SseClient, type SseClientOptions, type SseMessage, type StreamState } from './sse';

export type { StreamState } from './sse';

export interface TwinEvent {
  /** "twin" for a change, "deleted" when the device was deleted. */
  type: 'twin' | 'deleted';
  /** The stream id (resumable with Last-Event-ID). */
  id: string;
  device_id: string;
  desired_version: number;
  reported_version: number;
  sync_status: SyncStatus;
  at?: string;
}

/** A device connected to or disconnected from the broker (`event: presence`). */
export interface PresenceEvent {
  type: 'presence';
  id: string;
  device_id: string;
  connected: boolean;
  connected_at: string | null;
  disconnected_at: string | null;
  at?: string;
}

/** Every event the console's stream delivers. */
export type LiveEvent = TwinEvent | PresenceEvent;

/**
 * A named shadow's change (`event: shadow`, SPEC §9): delivered to its own listeners
 * (`subscribeShadows`), never as a LiveEvent, so device-level views do not mistake it for
 * the classic twin's change.
 */
export interface ShadowEvent {
  type: 'shadow';
  id: string;
  device_id: string;
  shadow: string;
  desired_version: number;
  reported_version: number;
  sync_status: SyncStatus;
  /** The shadow was deleted. */
  deleted: boolean;
  at?: string;
}

type EventListener = (event: LiveEvent) => void;
type ShadowListener = (event: ShadowEvent) => void;

/** A named shadow's event from an SSE message, or null for anything else. */
export function toShadowEvent(message: SseMessage): ShadowEvent | null {
  if (message.type !== 'shadow') return null;
  let data: unknown;
  try {
    data = JSON.parse(message.data);
  } catch {
    return null;
  }
  if (!data || typeof data !== 'object') return null;
  const record = data as Record<string, unknown>;
  if (typeof record.device_id !== 'string' || typeof record.shadow !== 'string') return null;
  return {
    type: 'shadow',
    id: message.lastEventId,
    device_id: record.device_id,
    shadow: record.shadow,
    desired_version: Number(record.desired_version ?? 0),
    reported_version: Number(record.reported_version ?? 0),
    sync_status: (record.sync_status as SyncStatus) ?? 'stale',
    deleted: record.deleted === true,
    at: typeof record.at === 'string' ? record.at : undefined,
  };
}
type StateListener = (state: StreamState) => void;

/** A twin event from an SSE message, or null for anything else. */
export function toTwinEvent(message: SseMessage): TwinEvent | null {
  if (message.type !== 'twin' && message.type !== 'deleted') return null;
  let data: unknown;
  try {
    data = JSON.parse(message.data);
  } catch {
    return null;
  }
  if (!data || typeof data !== 'object') return null;
  const record = data as Record<string, unknown>;
  if (typeof record.device_id !== 'string') return null;
  return {
    type: message.type,
    id: message.lastEventId,
    device_id: record.device_id,
    desired_version: Number(record.desired_version ?? 0),
    reported_version: Number(record.reported_version ?? 0),
    sync_status: (record.sync_status as SyncStatus) ?? 'stale',
    at: typeof record.at === 'string' ? record.at : undefined,
  };
}

const isoOrNull = (value: unknown): string | null => (typeof value === 'string' ? value : null);

/** A presence event from an SSE message, or null for anything else. */
export function toPresenceEvent(message: SseMessage): PresenceEvent | null {
  if (message.type !== 'presence') return null;
  let data: unknown;
  try {
    data = JSON.parse(message.data);
  } catch {
    return null;
  }
  if (!data || typeof data !== 'object') return null;
  const record = data as Record<string, unknown>;
  if (typeof record.device_id !== 'string' || typeof record.connected !== 'boolean') return null;
  return {
    type: 'presence',
    id: message.lastEventId,
    device_id: record.device_id,
    connected: record.connected,
    connected_at: isoOrNull(record.connected_at),
    disconnected_at: isoOrNull(record.disconnected_at),
    at: typeof record.at === 'string' ? record.at : undefined,
  };
}

/** The console's event for an SSE message (twin, deleted or presence), or null. */
export function toLiveEvent(message: SseMessage): LiveEvent | null {
  return message.type === 'presence' ? toPresenceEvent(message) : toTwinEvent(message);
}

export class LiveEvents {
  private readonly listeners = new Set<EventListener>();
  private readonly shadowListeners = new Set<ShadowListener>();
  private readonly stateListeners = new Set<StateListener>();
  private client: SseClient | null = null;
  private state: StreamState = 'down';
  private readonly options: Partial<SseClientOptions>;

  constructor(options: Partial<SseClientOptions> = {}) {
    this.options = options;
  }

  getState(): StreamState {
    return this.state;
  }

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    this.ensureOpen();
    return () => {
      this.listeners.delete(listener);
      this.closeIfUnused();
    };
  }

  /** Named shadows' changes (`event: shadow`); opens the stream like `subscribe`. */
  subscribeShadows(listener: ShadowListener): () => void {
    this.shadowListeners.add(listener);
    this.ensureOpen();
    return () => {
      this.shadowListeners.delete(listener);
      this.closeIfUnused();
    };
  }

  subscribeState(listener: StateListener): () => void {
    this.stateListeners.add(listener);
    return () => {
      this.stateListeners.delete(listener);
    };
  }

  private ensureOpen(): void {
    if (this.client) return;
    this.client = new SseClient({
      url: '/customer/events',
      getToken,
      onUnauthorized: clearToken,
      ...this.options,
      onMessage: (message) => {
        const shadow = toShadowEvent(message);
        if (shadow) {
          for (const listener of [...this.shadowListeners]) listener(shadow);
          return;
        }
        const event = toLiveEvent(message);
        if (!event) return;
        for (const listener of [...this.listeners]) listener(event);
      },
      onStateChange: (state) => this.setState(state),
    });
  }

  private closeIfUnused(): void {
    // Let a page that unmounts and the next one that mounts share the connection.
    queueMicrotask(() => {
      if (this.listeners.size > 0 || this.shadowListeners.size > 0 || !this.client) return;
      this.client.close();
      this.client = null;
      this.setState('down');
    });
  }

  private setState(state: StreamState): void {
    if (state === this.state) return;
    this.state = state;
    for (const listener of [...this.stateListeners]) listener(state);
  }
}

/** The console's one stream. */
export const liveEvents = new LiveEvents();
