import { render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it } from 'vitest';
import { json, mockFetch, signIn } from '../../test/fetchMock';
import { FleetPage } from './FleetPage';

const device = (id: string, overrides = {}) => ({
  device_id: id,
  name: `Pump ${id}`,
  tags: {},
  sync_status: 'synced',
  desired_version: 2,
  reported_version: 2,
  last_seen: new Date(Date.now() - 5000).toISOString(),
  ...overrides,
});

beforeEach(() => signIn());

describe('FleetPage', () => {
  it('lists devices with badge, versions and last seen, and hides a missing summary', async () => {
    mockFetch((call) =>
      call.url.startsWith('/customer/fleet/summary')
        ? json(404, { detail: 'Not Found' })
        : json(200, { items: [device('d-1'), device('d-2', { name: null, last_seen: null, sync_status: 'stale' })], next: null }),
    );
    render(<FleetPage pollIntervalMs={60_000} />);

    const link = await screen.findByRole('link', { name: 'd-1' });
    expect(link).toHaveAttribute('href', '/devices/d-1');
    const row = link.closest('tr');
    expect(row).not.toBeNull();
    expect(within(row as HTMLElement).getByText('Pump d-1')).toBeInTheDocument();
    expect(row).toHaveTextContent(/synced/);
    expect(row).toHaveTextContent(/5 s ago|6 s ago/);
    const other = screen.getByRole('link', { name: 'd-2' }).closest('tr') as HTMLElement;
    expect(other).toHaveTextContent('never');
    expect(other).toHaveTextContent('stale');
    expect(screen.queryByRole('list', { name: 'Fleet summary' })).toBeNull();
    expect(screen.getByRole('button', { name: 'Next page' })).toBeDisabled();
  });

  it('keeps refreshing the list but stops asking for a summary the server does not offer', async () => {
    const calls = mockFetch((call) =>
      call.url.startsWith('/customer/fleet/summary') ? json(404, { detail: 'Not Found' }) : json(200, { items: [device('d-1')], next: null }),
    );
    render(<FleetPage pollIntervalMs={20} />);
    await waitFor(() => expect(calls.filter((call) => call.url.startsWith('/customer/devices')).length).toBeGreaterThanOrEqual(3));
    expect(calls.filter((call) => call.url.startsWith('/customer/fleet/summary'))).toHaveLength(1);
  });

  it('filters by sync status and pages with the next cursor', async () => {
    const calls = mockFetch((call) => {
      if (call.url.startsWith('/customer/fleet/summary')) return json(200, { total: 3, synced: 1, pending: 2, stale: 0 });
      return call.url.includes('cursor=c2')
        ? json(200, { items: [device('d-3')], next: null })
        : json(200, { items: [device('d-1')], next: 'c2' });
    });
    const user = userEvent.setup();
    render(<FleetPage pollIntervalMs={60_000} />);

    expect(await screen.findByRole('list', { name: 'Fleet summary' })).toHaveTextContent('3 devices');
    await user.selectOptions(screen.getByLabelText('Sync status'), 'pending');
    await waitFor(() => expect(calls.some((call) => call.url.includes('sync_status=pending'))).toBe(true));

    await user.click(await screen.findByRole('button', { name: 'Next page' }));
    expect(await screen.findByRole('link', { name: 'd-3' })).toBeInTheDocument();
    expect(calls.some((call) => call.url.includes('sync_status=pending') && call.url.includes('cursor=c2'))).toBe(true);
    expect(screen.getByText('Page 2')).toBeInTheDocument();

    await user.click(screen.getByRole('button', { name: 'Previous page' }));
    expect(await screen.findByRole('link', { name: 'd-1' })).toBeInTheDocument();
  });

  it('adds a device and shows its provision token once, with tenant and a warning', async () => {
    const calls = mockFetch((call) => {
      if (call.method === 'POST') return json(201, { device_id: 'gen-42', tenant_id: 'acme', provision_token: 'tok-secret' });
      if (call.url.startsWith('/customer/fleet/summary')) return json(404, {});
      return json(200, { items: [], next: null });
    });
    const user = userEvent.setup();
    render(<FleetPage pollIntervalMs={60_000} />);

    await user.click(screen.getByRole('button', { name: 'Add device' }));
    const dialog = screen.getByRole('dialog', { name: 'Add device' });
    await user.type(within(dialog).getByLabelText('Device ID (optional)'), 'bad/id');
    expect(within(dialog).getByRole('button', { name: 'Create device' })).toBeDisabled();
    await user.clear(within(dialog).getByLabelText('Device ID (optional)'));
    await user.type(within(dialog).getByLabelText('Name (optional)'), 'Boiler');
    await user.click(within(dialog).getByRole('button', { name: 'Create device' }));

    expect(await within(dialog).findByLabelText('Provision token')).toHaveValue('tok-secret');
    expect(within(dialog).getByLabelText('Device ID')).toHaveValue('gen-42');
    expect(within(dialog).getByLabelText('Tenant')).toHaveValue('acme');
    expect(dialog).toHaveTextContent('This token will not be shown again');
    expect(calls.find((call) => call.method === 'POST')?.body).toEqual({ name: 'Boiler' });

    await user.click(within(dialog).getByRole('button', { name: 'Done' }));
    expect(screen.queryByRole('dialog')).toBeNull();
  });

  it('shows a readable alert when the list cannot be loaded', async () => {
    mockFetch(() => json(403, { detail: 'viewer role cannot list devices' }));
    render(<FleetPage pollIntervalMs={60_000} />);
    expect(await screen.findByRole('alert')).toHaveTextContent('You do not have permission to do this: viewer role cannot list devices');
  });
});
