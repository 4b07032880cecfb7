import { describe, expect, it } from 'vitest';
import { toLiveEvent, toPresenceEvent } from './events';
import type { SseMessage } from './sse';

const message = (type: string, data: unknown, lastEventId = '7'): SseMessage =>
  ({ type, data: typeof data === 'string' ? data : JSON.stringify(data), lastEventId });

describe('live events', () => {
  it('reads a presence event with its stream id', () => {
    const event = toLiveEvent(
      message('presence', {
        device_id: 'd-1',
        connected: true,
        connected_at: '2026-05-01T10:00:00+00:00',
        disconnected_at: null,
        at: '2026-05-01T10:00:00.1+00:00',
      }),
    );
    expect(event).toEqual({
      type: 'presence',
      id: '7',
      device_id: 'd-1',
      connected: true,
      connected_at: '2026-05-01T10:00:00+00:00',
      disconnected_at: null,
      at: '2026-05-01T10:00:00.1+00:00',
    });
  });

  it('still reads twin and deleted events, and drops malformed or unknown ones', () => {
    expect(toLiveEvent(message('twin', { device_id: 'd-1', desired_version: 2, reported_version: 1, sync_status: 'pending' }))).toMatchObject({
      type: 'twin',
      device_id: 'd-1',
      desired_version: 2,
    });
    expect(toLiveEvent(message('deleted', { device_id: 'd-1' }))).toMatchObject({ type: 'deleted' });
    expect(toPresenceEvent(message('presence', '{not json'))).toBeNull();
    expect(toPresenceEvent(message('presence', { device_id: 'd-1' }))).toBeNull();
    expect(toPresenceEvent(message('presence', { device_id: 'd-1', connected: 'yes' }))).toBeNull();
    expect(toPresenceEvent(message('twin', { device_id: 'd-1', connected: true }))).toBeNull();
    expect(toLiveEvent(message('reset', { reason: 'x' }))).toBeNull();
  });
});
