import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it } from 'vitest';
import type { JsonObject, Twin } from '../../services/api/devices';
import { eventStream, json, mockFetch, signIn, type Call } from '../../test/fetchMock';
import { ShadowTabs } from './ShadowTabs';

const NOW = new Date().toISOString();

function twin(desired: JsonObject, version: number): Twin {
  return {
    device_id: 'dev-1',
    tenant_id: 'acme',
    desired,
    reported: {},
    delta: desired,
    desired_version: version,
    reported_version: 0,
    sync_status: 'pending',
    shadow_updated_at: NOW,
    last_seen: NOW,
    connected: false,
    connected_at: null,
    disconnected_at: null,
  };
}

/** A server whose named shadows and firmware document the test changes as it goes. */
function server() {
  const stream = eventStream();
  const state = { names: [] as string[], image: 'v1', version: 1 };
  const handler = (call: Call): Response => {
    const path = new URL(call.url, 'http://console').pathname;
    if (path === '/customer/events') return stream.response;
    if (path === '/customer/devices/dev-1/shadows') {
      return json(200, {
        device_id: 'dev-1',
        items: state.names.map((name) => ({ name, desired_version: 1, reported_version: 0, version: 1, shadow_updated_at: NOW })),
      });
    }
    if (path.endsWith('/history')) return json(200, { items: [], next: null });
    if (path === '/customer/devices/dev-1/twin') return json(200, twin({ led: 'green' }, 4), { ETag: '"4"' });
    if (path === '/customer/devices/dev-1/shadows/firmware/twin') {
      return json(200, twin({ image: state.image }, state.version), { ETag: `"${state.version}"` });
    }
    return json(404, { detail: 'not found' });
  };
  return { stream, state, handler };
}

const count = (calls: Call[], path: string) => calls.filter((call) => new URL(call.url, 'http://console').pathname === path).length;

function shadowEvent(shadow: string, extra: Record<string, unknown> = {}, device = 'dev-1') {
  return { device_id: device, shadow, desired_version: 2, reported_version: 0, sync_status: 'pending', at: NOW, ...extra };
}

beforeEach(() => signIn());

describe('ShadowTabs on the event stream', () => {
  it('adds, refreshes and removes named shadow tabs from `event: shadow`, without polling', async () => {
    const { stream, state, handler } = server();
    const calls = mockFetch(handler);
    // Polling far beyond the test's length: only events can make these changes appear.
    render(<ShadowTabs deviceId="dev-1" pollIntervalMs={600_000} />);
    expect(await screen.findByLabelText('Desired state')).toHaveTextContent(/"led".*"green"/);
    expect(screen.queryByRole('tablist', { name: 'Shadows' })).not.toBeInTheDocument();
    await waitFor(() => expect(count(calls, '/customer/events')).toBe(1));

    // The device creates a named shadow: its tab appears.
    state.names = ['firmware'];
    stream.shadow(shadowEvent('firmware', { desired_version: 1 }));
    const tab = await screen.findByRole('tab', { name: 'firmware' });
    await userEvent.click(tab);
    await waitFor(() => expect(screen.getByLabelText('Desired state')).toHaveTextContent(/"image".*"v1"/));

    // A change of this shadow re-reads its view and history.
    const twinPath = '/customer/devices/dev-1/shadows/firmware/twin';
    const historyPath = `${twinPath}/history`;
    const [twinReads, historyReads] = [count(calls, twinPath), count(calls, historyPath)];
    state.image = 'v2';
    state.version = 2;
    stream.shadow(shadowEvent('firmware'));
    await waitFor(() => expect(screen.getByLabelText('Desired state')).toHaveTextContent(/"image".*"v2"/));
    await waitFor(() => expect(count(calls, historyPath)).toBeGreaterThan(historyReads));
    expect(count(calls, twinPath)).toBeGreaterThan(twinReads);

    // Another device's or another shadow's change does not.
    const reads = count(calls, twinPath);
    const listReads = count(calls, '/customer/devices/dev-1/shadows');
    stream.shadow(shadowEvent('firmware', {}, 'dev-2'));
    stream.shadow(shadowEvent('other', {}, 'dev-2'));
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(count(calls, twinPath)).toBe(reads);
    expect(count(calls, '/customer/devices/dev-1/shadows')).toBe(listReads);

    // Deleted: its tab goes and the view falls back to the classic shadow.
    state.names = [];
    stream.shadow(shadowEvent('firmware', { deleted: true, desired_version: 0, sync_status: 'synced' }));
    await waitFor(() => expect(screen.queryByRole('tab', { name: 'firmware' })).not.toBeInTheDocument());
    expect(await screen.findByLabelText('Desired state')).toHaveTextContent(/"led".*"green"/);
  });
});
