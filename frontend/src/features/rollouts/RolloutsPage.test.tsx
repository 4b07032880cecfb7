import { render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { matchRoute } from '../../app/router';
import { eventStream, json, mockFetch, signIn } from '../../test/fetchMock';
import { actionsFor, type Rollout, type RolloutStage } from './api';
import { RolloutPage, RolloutsPage } from './RolloutsPage';

beforeEach(() => signIn());

const ID = '0b6f3c1e-1111-4222-8333-444455556666';

const stage = (index: number, overrides: Partial<RolloutStage> = {}): RolloutStage => ({
  stage: index,
  target: { percent: [10, 50, 100][index] ?? 100 },
  devices: 10,
  written: 0,
  not_written: 0,
  synced: 0,
  rejected: 0,
  unhealthy: 0,
  reverted: 0,
  status: 'waiting',
  ...overrides,
});

const rollout = (overrides: Partial<Rollout> = {}): Rollout => ({
  rollout_id: ID,
  state: 'running',
  stage: 0,
  stages: [stage(0, { written: 4, synced: 2, rejected: 1, status: 'gating' }), stage(1), stage(2)],
  matched: 30,
  desired: { fw: '2.0' },
  success: { synced_ratio: 0.9, within_s: 60, health: { pointer: '/reported/health', op: '==', value: 'ok' } },
  on_failure: 'revert',
  reason: null,
  created_by: 'ops@example.com',
  created_at: new Date().toISOString(),
  finished_at: null,
  ...overrides,
});

describe('rollout routes and actions', () => {
  it('matches /rollouts and /rollouts/{uuid} only', () => {
    expect(matchRoute('/rollouts')).toEqual({ name: 'rollouts' });
    expect(matchRoute(`/rollouts/${ID}`)).toEqual({ name: 'rollout', rolloutId: ID });
    expect(matchRoute('/rollouts/nope')).toEqual({ name: 'not-found' });
  });

  it('offers the buttons a state allows', () => {
    expect(actionsFor('running')).toEqual(['pause', 'abort']);
    expect(actionsFor('paused')).toEqual(['resume', 'abort']);
    expect(actionsFor('reverting')).toEqual(['abort']);
    expect(actionsFor('done')).toEqual([]);
    expect(actionsFor('reverted')).toEqual([]);
  });
});

describe('RolloutPage', () => {
  it('shows each stage as a progress bar with counts and follows the event stream', async () => {
    const stream = eventStream();
    let current = rollout();
    mockFetch((call) => {
      if (call.url === '/customer/events') return stream.response;
      return json(200, current);
    });
    render(<RolloutPage rolloutId={ID} />);
    expect(await screen.findByRole('status', { name: 'Rollout state: running' })).toBeInTheDocument();
    const stages = screen.getByRole('list', { name: 'Stages' });
    const first = within(stages).getAllByRole('listitem')[0] as HTMLElement;
    expect(within(first).getByRole('progressbar', { name: 'Stage 1 written' })).toHaveAttribute('aria-valuenow', '4');
    expect(first.querySelector('[data-count="written"]')).toHaveTextContent('4 / 10');
    expect(first.querySelector('[data-count="synced"]')).toHaveTextContent('2');
    expect(first.querySelector('[data-count="rejected"]')).toHaveTextContent('1');
    expect(screen.getByText(/\/reported\/health == "ok"/)).toBeInTheDocument();
    await waitFor(() => expect(screen.getByText('Live')).toBeInTheDocument());

    current = rollout({ stage: 1, stages: [stage(0, { written: 10, synced: 10, status: 'passed' }), stage(1, { written: 3, status: 'writing' }), stage(2)] });
    stream.twin({ device_id: 'd-1', desired_version: 2, reported_version: 2, sync_status: 'synced', at: new Date().toISOString() });
    await waitFor(() => expect(first.querySelector('[data-count="written"]')).toHaveTextContent('10 / 10'));
    const second = within(stages).getAllByRole('listitem')[1] as HTMLElement;
    expect(second.querySelector('[data-count="written"]')).toHaveTextContent('3 / 10');
  });

  it('pauses, resumes and aborts with the buttons', async () => {
    let current = rollout();
    const calls = mockFetch((call) => {
      if (call.url === '/customer/events') return eventStream().response;
      if (call.method === 'POST' && call.url.endsWith('/pause')) current = rollout({ state: 'paused', reason: 'pause by ops' });
      if (call.method === 'POST' && call.url.endsWith('/resume')) current = rollout({ state: 'running' });
      if (call.method === 'POST' && call.url.endsWith('/abort')) current = rollout({ state: 'aborted' });
      return json(200, current);
    });
    vi.spyOn(window, 'confirm').mockReturnValue(true);
    const user = userEvent.setup();
    render(<RolloutPage rolloutId={ID} />);
    await user.click(await screen.findByRole('button', { name: 'Pause' }));
    expect(await screen.findByRole('status', { name: 'Rollout state: paused' })).toBeInTheDocument();
    expect(screen.getByText('pause by ops')).toBeInTheDocument();
    await user.click(screen.getByRole('button', { name: 'Resume' }));
    expect(await screen.findByRole('status', { name: 'Rollout state: running' })).toBeInTheDocument();
    await user.click(screen.getByRole('button', { name: 'Abort' }));
    expect(await screen.findByRole('status', { name: 'Rollout state: aborted' })).toBeInTheDocument();
    expect(screen.queryByRole('button', { name: 'Resume' })).toBeNull();
    const posts = calls.filter((call) => call.method === 'POST').map((call) => call.url);
    expect(posts).toEqual([`/customer/fleet/rollouts/${ID}/pause`, `/customer/fleet/rollouts/${ID}/resume`, `/customer/fleet/rollouts/${ID}/abort`]);
  });

  it('shows a refused action as an alert', async () => {
    mockFetch((call) => {
      if (call.url === '/customer/events') return eventStream().response;
      if (call.method === 'POST') return json(409, { detail: 'cannot pause a rollout that is done' });
      return json(200, rollout());
    });
    render(<RolloutPage rolloutId={ID} />);
    await userEvent.setup().click(await screen.findByRole('button', { name: 'Pause' }));
    expect(await screen.findByRole('alert')).toHaveTextContent('cannot pause a rollout that is done');
  });
});

describe('RolloutsPage', () => {
  it('lists rollouts with links to each', async () => {
    mockFetch((call) => {
      if (call.url === '/customer/events') return eventStream().response;
      return json(200, { items: [rollout({ state: 'done', stage: 2 })] });
    });
    render(<RolloutsPage />);
    const link = await screen.findByRole('link', { name: ID.slice(0, 8) });
    expect(link).toHaveAttribute('href', `/rollouts/${ID}`);
    expect(link.closest('tr')).toHaveTextContent('done');
    expect(link.closest('tr')).toHaveTextContent('3 / 3');
  });
});
