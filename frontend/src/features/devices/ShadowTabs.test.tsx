import { render, screen, waitFor, within } from '@testing-library/react';
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

function server(names: string[]): (call: Call) => Response {
  return (call) => {
    const path = new URL(call.url, 'http://console').pathname;
    if (path === '/customer/events') return eventStream().response;
    if (path === '/customer/devices/dev-1/shadows') {
      return json(200, { device_id: 'dev-1', items: names.map((name) => ({ name, desired_version: 1, reported_version: 0, version: 1, shadow_updated_at: NOW })) });
    }
    if (path.endsWith('/history')) return json(200, { items: [], next: null });
    if (path === '/customer/devices/dev-1/twin') return json(200, twin({ led: 'green' }, 4), { ETag: '"4"' });
    if (path === '/customer/devices/dev-1/shadows/firmware/twin') {
      return json(200, twin({ image: 'v2' }, 1), { ETag: '"1"' });
    }
    if (path === '/customer/devices/dev-1/shadows/firmware/twin/desired') {
      return json(200, twin({ image: 'v3' }, 2), { ETag: '"2"' });
    }
    return json(404, { detail: 'not found' });
  };
}

beforeEach(() => signIn());

describe('ShadowTabs', () => {
  it('shows a tab per shadow, classic first, and switches the twin and history to the named one', async () => {
    const calls = mockFetch(server(['firmware']));
    render(<ShadowTabs deviceId="dev-1" pollIntervalMs={60_000} />);

    const tablist = await screen.findByRole('tablist', { name: 'Shadows' });
    const tabs = within(tablist).getAllByRole('tab');
    const [classic, firmware] = tabs as [HTMLElement, HTMLElement];
    expect(tabs.map((tab) => tab.textContent)).toEqual(['Classic', 'firmware']);
    expect(classic).toHaveAttribute('aria-selected', 'true');
    expect(await screen.findByLabelText('Desired state')).toHaveTextContent(/"led".*"green"/);

    await userEvent.click(firmware);
    expect(firmware).toHaveAttribute('aria-selected', 'true');
    await waitFor(() => expect(screen.getByLabelText('Desired state')).toHaveTextContent(/"image".*"v2"/));
    expect(screen.getByRole('heading', { level: 2, name: 'Shadow firmware' })).toBeInTheDocument();
    await waitFor(() =>
      expect(calls.some((call) => call.url.includes('/shadows/firmware/twin/history'))).toBe(true),
    );
  });

  it('writes desired to the selected named shadow with its If-Match', async () => {
    const calls = mockFetch(server(['firmware']));
    render(<ShadowTabs deviceId="dev-1" pollIntervalMs={60_000} />);
    await userEvent.click(await screen.findByRole('tab', { name: 'firmware' }));
    await waitFor(() => expect(screen.getByLabelText('Desired state')).toHaveTextContent(/"image".*"v2"/));

    const editor = screen.getByLabelText('Desired patch (JSON merge patch)');
    await userEvent.clear(editor);
    await userEvent.click(editor);
    await userEvent.paste('{"image": "v3"}');
    await userEvent.click(screen.getByRole('button', { name: /save|apply/i }));

    await waitFor(() => expect(calls.some((call) => call.method === 'PATCH')).toBe(true));
    const patch = calls.find((call) => call.method === 'PATCH');
    expect(new URL(patch!.url, 'http://console').pathname).toBe('/customer/devices/dev-1/shadows/firmware/twin/desired');
    expect(patch!.headers['if-match']).toBe('"1"');
    expect(patch!.body).toEqual({ desired: { image: 'v3' } });
  });

  it('shows no tabs for a device with only its classic shadow', async () => {
    mockFetch(server([]));
    render(<ShadowTabs deviceId="dev-1" pollIntervalMs={60_000} />);
    expect(await screen.findByLabelText('Desired state')).toHaveTextContent(/"led".*"green"/);
    expect(screen.queryByRole('tablist')).toBeNull();
  });
});
