import { render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it } from 'vitest';
import { eventStream, json, mockFetch, signIn } from '../../test/fetchMock';
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

  it('filters by tag and text (debounced) and explains a malformed tag filter', async () => {
    const calls = mockFetch((call) =>
      call.url.startsWith('/customer/devices') ? json(200, { items: [device('d-1', { tags: { site: 'berlin' } })], next: null }) : json(404, {}),
    );
    const user = userEvent.setup();
    render(<FleetPage pollIntervalMs={60_000} />);
    const row = (await screen.findByRole('link', { name: 'd-1' })).closest('tr') as HTMLElement;
    expect(row).toHaveTextContent('site:berlin');

    await user.type(screen.getByLabelText('Tag'), 'site');
    expect(await screen.findByText(/Write the tag as key:value/)).toBeInTheDocument();
    expect(screen.getByRole('button', { name: 'Set desired for matching devices' })).toBeDisabled();
    await user.type(screen.getByLabelText('Tag'), ':berlin');
    await user.type(screen.getByLabelText('Search'), 'pump');
    await waitFor(() =>
      expect(calls.some((call) => call.url === '/customer/devices?limit=20&tag=site%3Aberlin&q=pump')).toBe(true),
    );
    expect(calls.some((call) => call.url.includes('tag=site&') || call.url.endsWith('tag=site'))).toBe(false);
  });

  it('starts a bulk job from the current filter and shows its progress until done', async () => {
    let polls = 0;
    const calls = mockFetch((call) => {
      if (call.url.startsWith('/customer/fleet/summary')) return json(200, { total: 5, synced: 2, pending: 3, stale: 0 });
      if (call.url.startsWith('/customer/fleet/jobs/job-1')) {
        polls += 1;
        return json(200, {
          job_id: 'job-1',
          status: polls < 2 ? 'running' : 'done',
          matched: 3,
          written: polls < 2 ? 1 : 3,
          synced: polls < 3 ? 0 : 3,
          desired: { mode: 'eco' },
        });
      }
      if (call.url.startsWith('/customer/fleet/jobs')) return json(200, { items: [] });
      if (call.method === 'POST' && call.url === '/customer/fleet/desired') return json(202, { job_id: 'job-1' });
      return json(200, { items: [device('d-1')], next: null });
    });
    const user = userEvent.setup();
    render(<FleetPage pollIntervalMs={60_000} jobPollIntervalMs={20} />);
    await screen.findByRole('link', { name: 'd-1' });
    await user.selectOptions(screen.getByLabelText('Sync status'), 'pending');

    await user.click(screen.getByRole('button', { name: 'Set desired for matching devices' }));
    const dialog = screen.getByRole('dialog', { name: 'Set desired for matching devices' });
    expect(dialog).toHaveTextContent('devices with sync status pending (3 now)');
    const start = within(dialog).getByRole('button', { name: 'Start bulk job' });
    expect(start).toBeDisabled();
    await user.type(within(dialog).getByLabelText('Desired patch for matching devices'), '{{"mode": "eco"}');
    await user.click(start);

    expect(calls.find((call) => call.method === 'POST')?.body).toEqual({ filter: { sync_status: 'pending' }, desired: { mode: 'eco' } });
    expect(screen.queryByRole('dialog')).toBeNull();
    const progress = await screen.findByRole('region', { name: 'Bulk job progress' });
    expect(await within(progress).findByRole('status', { name: 'Job status: applied' })).toBeInTheDocument();
    await waitFor(() => expect(progress.querySelector('[data-count="synced"]')).toHaveTextContent('3'));
    expect(progress.querySelector('[data-count="matched"]')).toHaveTextContent('3');
    await user.click(within(progress).getByRole('button', { name: 'Dismiss' }));
    expect(screen.queryByRole('region', { name: 'Bulk job progress' })).toBeNull();
  });

  it('shows a refused bulk job as a readable message in the dialog', async () => {
    mockFetch((call) => {
      if (call.method === 'POST') return json(403, { detail: 'this needs the operator role; you are viewer' });
      if (call.url.startsWith('/customer/devices')) return json(200, { items: [], next: null });
      return json(404, {});
    });
    const user = userEvent.setup();
    render(<FleetPage pollIntervalMs={60_000} />);
    await user.click(screen.getByRole('button', { name: 'Set desired for matching devices' }));
    const dialog = screen.getByRole('dialog', { name: 'Set desired for matching devices' });
    expect(dialog).toHaveTextContent('No filter is set');
    await user.type(within(dialog).getByLabelText('Desired patch for matching devices'), '{{"a": 1}');
    await user.click(within(dialog).getByRole('button', { name: 'Start bulk job' }));
    expect(await within(dialog).findByRole('alert')).toHaveTextContent(
      'You do not have permission to do this: this needs the operator role; you are viewer',
    );
  });

  it('updates a row and the summary live from the event stream', async () => {
    const stream = eventStream();
    let summary = { total: 1, synced: 0, pending: 1, stale: 0 };
    let listed = device('d-1', { sync_status: 'pending', desired_version: 3, reported_version: 2 });
    mockFetch((call) => {
      if (call.url === '/customer/events') return stream.response;
      if (call.url.startsWith('/customer/fleet/summary')) return json(200, summary);
      if (call.url.startsWith('/customer/fleet/jobs')) return json(200, { items: [] });
      return json(200, { items: [listed], next: null });
    });
    render(<FleetPage pollIntervalMs={60_000} />);
    const row = (await screen.findByRole('link', { name: 'd-1' })).closest('tr') as HTMLElement;
    expect(row).toHaveTextContent('pending');
    await waitFor(() => expect(screen.getByText('Live')).toBeInTheDocument());

    summary = { total: 1, synced: 1, pending: 0, stale: 0 };
    listed = { ...listed, sync_status: 'synced', reported_version: 3 };
    stream.twin({ device_id: 'd-1', desired_version: 3, reported_version: 3, sync_status: 'synced', at: new Date().toISOString() });
    await waitFor(() => expect(row).toHaveTextContent('synced'));
    await waitFor(() => expect(screen.getByRole('list', { name: 'Fleet summary' }).querySelector('[data-count="synced"]')).toHaveTextContent('1 synced'));
  });

  it('shows an online dot per row and keeps it and the connected count live from presence events', async () => {
    const stream = eventStream();
    const since = new Date(Date.now() - 60_000).toISOString();
    let summary = { total: 2, synced: 2, pending: 0, stale: 0, connected: 1 };
    const listed: Record<string, unknown>[] = [
      device('d-1', { connected: true, connected_at: since, disconnected_at: null }),
      device('d-2', { connected: false, connected_at: null, disconnected_at: null }),
    ];
    mockFetch((call) => {
      if (call.url === '/customer/events') return stream.response;
      if (call.url.startsWith('/customer/fleet/summary')) return json(200, summary);
      if (call.url.startsWith('/customer/fleet/jobs')) return json(200, { items: [] });
      return json(200, { items: listed, next: null });
    });
    render(<FleetPage pollIntervalMs={60_000} />);
    const row = (await screen.findByRole('link', { name: 'd-1' })).closest('tr') as HTMLElement;
    const other = screen.getByRole('link', { name: 'd-2' }).closest('tr') as HTMLElement;
    expect(within(row).getByRole('img', { name: /^online since / })).toHaveClass('online-dot--online');
    expect(within(other).getByRole('img', { name: 'offline (never connected)' })).toHaveClass('online-dot--offline');
    const counts = await screen.findByRole('list', { name: 'Fleet summary' });
    await waitFor(() => expect(counts.querySelector('[data-count="connected"]')).toHaveTextContent('1 connected'));
    await waitFor(() => expect(screen.getByText('Live')).toBeInTheDocument());

    // d-2 connects: its dot turns green and the page and summary are read again.
    summary = { ...summary, connected: 2 };
    const connectedAt = new Date().toISOString();
    listed[1] = { ...listed[1], connected: true, connected_at: connectedAt };
    stream.presence({ device_id: 'd-2', connected: true, connected_at: connectedAt, disconnected_at: null });
    await waitFor(() => expect(within(other).getByRole('img', { name: /^online since / })).toHaveClass('online-dot--online'));
    await waitFor(() => expect(counts.querySelector('[data-count="connected"]')).toHaveTextContent('2 connected'));
    expect(row).toHaveTextContent('synced');
  });
});
