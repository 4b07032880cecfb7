import { render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import type { FleetJob, FleetSummary } from '../../services/api/devices';
import { describeFilter } from './BulkDesiredDialog';
import { FleetSummaryBar } from './FleetSummaryBar';
import { JobProgress, jobSettled } from './JobProgress';

const job = (overrides: Partial<FleetJob> = {}): FleetJob => ({
  job_id: '0b6f3c1e-1111-4222-8333-444455556666',
  status: 'running',
  matched: 10,
  written: 4,
  synced: 1,
  desired: { firmware: '2.1.0' },
  created_by: 'ops@example.com',
  ...overrides,
});

describe('FleetSummaryBar', () => {
  it('shows total and per-status counts, each status as a filter shortcut', async () => {
    const onPick = vi.fn();
    render(<FleetSummaryBar summary={{ total: 12, synced: 7, pending: 3, stale: 2, connected: 5 }} onPick={onPick} />);
    const list = screen.getByRole('list', { name: 'Fleet summary' });
    expect(list).toHaveTextContent('12 devices');
    const counts = Object.fromEntries(
      within(list)
        .getAllByRole('listitem')
        .map((li) => [li.getAttribute('data-count'), li.textContent]),
    );
    expect(counts).toEqual({ total: '12 devices', synced: '7 synced', pending: '3 pending', stale: '2 stale', connected: '5 connected' });
    await userEvent.setup().click(within(list).getByTitle('Show only pending devices'));
    expect(onPick).toHaveBeenCalledWith('pending');
  });

  it('leaves the connected figure out when the server does not send it', () => {
    const { total, synced, pending, stale } = { total: 2, synced: 2, pending: 0, stale: 0 };
    render(<FleetSummaryBar summary={{ total, synced, pending, stale } as FleetSummary} />);
    const list = screen.getByRole('list', { name: 'Fleet summary' });
    expect(list.querySelector('[data-count="connected"]')).toBeNull();
  });

  it('says "1 device" for one', () => {
    render(<FleetSummaryBar summary={{ total: 1, synced: 1, pending: 0, stale: 0, connected: 0 }} />);
    expect(screen.getByRole('list', { name: 'Fleet summary' })).toHaveTextContent('1 device');
  });
});

describe('JobProgress', () => {
  it('shows status, matched / written / synced and progress bars while running', () => {
    render(<JobProgress job={job()} onDismiss={() => undefined} />);
    const region = screen.getByRole('region', { name: 'Bulk job progress' });
    expect(within(region).getByRole('status', { name: 'Job status: writing' })).toHaveTextContent('writing');
    expect(region.querySelector('[data-count="matched"]')).toHaveTextContent('10');
    expect(region.querySelector('[data-count="written"]')).toHaveTextContent('4');
    expect(region.querySelector('[data-count="synced"]')).toHaveTextContent('1');
    expect(within(region).getByRole('progressbar', { name: 'Written' })).toHaveAttribute('value', '4');
    expect(within(region).getByRole('progressbar', { name: 'Written' })).toHaveAttribute('max', '10');
    expect(within(region).getByRole('progressbar', { name: 'Applied' })).toHaveAttribute('max', '4');
    expect(region).toHaveTextContent('{"firmware":"2.1.0"}');
    // Nothing to dismiss while it runs.
    expect(within(region).queryByRole('button', { name: 'Dismiss' })).toBeNull();
    expect(jobSettled(job())).toBe(false);
  });

  it('when written, separates written from applied and can be dismissed before every device applies', () => {
    const { rerender } = render(<JobProgress job={job({ status: 'done', written: 3, synced: 0 })} onDismiss={() => undefined} />);
    // Not "done" while 0 of 3 applied.
    const status = screen.getByRole('status', { name: 'Job status: written' });
    expect(status).toHaveTextContent('written, not all applied');
    expect(status).not.toHaveTextContent('done');
    expect(screen.getByText(/0 of 3 applied so far, waiting for 3 to report/)).toBeInTheDocument();
    expect(screen.getByRole('button', { name: 'Dismiss' })).toBeInTheDocument();
    expect(jobSettled(job({ status: 'done', written: 3, synced: 0 }))).toBe(false);
    rerender(<JobProgress job={job({ status: 'done', written: 10, synced: 10 })} onDismiss={() => undefined} />);
    expect(screen.getByRole('status', { name: 'Job status: applied' })).toBeInTheDocument();
    expect(screen.getByRole('button', { name: 'Dismiss' })).toBeInTheDocument();
    expect(screen.queryByText(/waiting for/)).toBeNull();
  });

  it('shows a failed job with its error', () => {
    render(<JobProgress job={job({ status: 'failed', error: 'database went away' })} />);
    expect(screen.getByRole('alert')).toHaveTextContent('The job failed: database went away');
    expect(jobSettled(job({ status: 'failed' }))).toBe(true);
  });

  it('describes filters in words', () => {
    expect(describeFilter({})).toBe('every device in the fleet');
    expect(describeFilter({ sync_status: 'pending', tag: 'site:berlin', q: 'pump' })).toBe(
      'devices with sync status pending, tag site:berlin, id or name containing "pump"',
    );
  });
});
