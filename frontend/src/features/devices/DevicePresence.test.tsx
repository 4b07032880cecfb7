import { render, screen, waitFor } from '@testing-library/react';
import { beforeEach, describe, expect, it } from 'vitest';
import { eventStream, json, mockFetch, signIn } from '../../test/fetchMock';
import { DevicePresence } from './DevicePresence';
import { absoluteTime } from './relativeTime';

const CONNECTED_AT = '2026-05-01T10:00:00+00:00';
const DISCONNECTED_AT = '2026-05-01T11:30:00+00:00';

beforeEach(() => signIn());

describe('DevicePresence', () => {
  it("shows the device's dot from its profile and follows its presence events only", async () => {
    const stream = eventStream();
    mockFetch((call) => {
      if (call.url === '/customer/events') return stream.response;
      return json(200, {
        device_id: 'dev-1',
        name: 'dev-1',
        tags: {},
        sync_status: 'synced',
        desired_version: 1,
        reported_version: 1,
        last_seen: CONNECTED_AT,
        connected: true,
        connected_at: CONNECTED_AT,
        disconnected_at: null,
        model_id: null,
      });
    });
    render(<DevicePresence deviceId="dev-1" />);
    const dot = await screen.findByRole('status', { name: `online since ${absoluteTime(CONNECTED_AT)}` });
    expect(dot).toHaveClass('online-dot--online');

    // Another device's event changes nothing; this device's does.
    stream.presence({ device_id: 'dev-2', connected: false, connected_at: null, disconnected_at: DISCONNECTED_AT });
    stream.presence({ device_id: 'dev-1', connected: false, connected_at: CONNECTED_AT, disconnected_at: DISCONNECTED_AT });
    await waitFor(() =>
      expect(screen.getByRole('status', { name: `offline since ${absoluteTime(DISCONNECTED_AT)}` })).toHaveClass('online-dot--offline'),
    );
    expect(screen.getByText(`offline since ${absoluteTime(DISCONNECTED_AT)}`)).toBeInTheDocument();
  });

  it('shows nothing when the profile cannot be read', async () => {
    const calls = mockFetch(() => json(404, { detail: 'device not found' }));
    const { container } = render(<DevicePresence deviceId="gone" />);
    await waitFor(() => expect(calls.some((call) => call.url === '/customer/devices/gone')).toBe(true));
    expect(container).toBeEmptyDOMElement();
  });
});
