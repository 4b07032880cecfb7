import { render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it } from 'vitest';
import type { HistoryItem } from '../../services/api/devices';
import { json, mockFetch, signIn } from '../../test/fetchMock';
import { actorName, patchLines } from './historyDiff';
import { HistoryEntry, HistoryTimeline } from './HistoryTimeline';

const item = (id: number, overrides: Partial<HistoryItem> = {}): HistoryItem => ({
  id,
  at: new Date(Date.now() - 60_000).toISOString(),
  kind: 'desired',
  actor: { type: 'user', email: 'ops@example.com' },
  version: id,
  patch: { led: 'green' },
  ...overrides,
});

beforeEach(() => signIn());

describe('patchLines', () => {
  it('renders a merge patch as + set / - removed lines down to the leaves', () => {
    expect(
      patchLines({ led: 'green', fan: { speed: 3, mode: null }, old: null, list: [1, 2], empty: {}, 'a.b': true }),
    ).toEqual([
      { op: '+', path: 'led', value: '"green"' },
      { op: '+', path: 'fan.speed', value: '3' },
      { op: '-', path: 'fan.mode' },
      { op: '-', path: 'old' },
      { op: '+', path: 'list', value: '[1,2]' },
      { op: '+', path: 'empty', value: '{}' },
      { op: '+', path: '"a.b"', value: 'true' },
    ]);
    expect(patchLines({})).toEqual([]);
  });

  it('names actors: the e-mail of a user, "device" for the device', () => {
    expect(actorName({ type: 'user', email: 'ops@example.com' })).toBe('ops@example.com');
    expect(actorName({ type: 'device' })).toBe('device');
  });
});

describe('HistoryEntry', () => {
  it('shows time, actor, kind, version and the diff', () => {
    render(
      <ol>
        <HistoryEntry item={item(3, { patch: { led: 'blue', fan: null } })} />
      </ol>,
    );
    const entry = screen.getByRole('listitem');
    expect(entry).toHaveTextContent('by ops@example.com');
    expect(entry).toHaveTextContent('desired');
    expect(entry).toHaveTextContent('version 3');
    expect(entry).toHaveTextContent('1 min ago');
    const diff = screen.getByLabelText('Changes in desired version 3');
    expect(diff).toHaveTextContent('+ led: "blue"');
    expect(diff).toHaveTextContent('- fan');
    expect(diff.querySelector('.diff-remove')).toHaveTextContent('- fan');
  });

  it('says "device" for reports and explains an empty report', () => {
    render(
      <ol>
        <HistoryEntry item={item(4, { kind: 'reported', actor: { type: 'device' }, patch: {} })} />
      </ol>,
    );
    expect(screen.getByRole('listitem')).toHaveTextContent('by device');
    expect(screen.getByRole('listitem')).toHaveTextContent('No changes (empty report)');
  });
});

describe('HistoryTimeline', () => {
  it('lists newest first and loads older entries with "Load more"', async () => {
    const calls = mockFetch((call) => {
      if (!call.url.includes('/twin/history')) return json(503, { detail: 'no stream here' });
      return call.url.includes('cursor=3')
        ? json(200, { items: [item(2, { kind: 'reported', actor: { type: 'device' }, patch: { led: 'red' } }), item(1)], next: null })
        : json(200, { items: [item(4, { patch: { led: null } }), item(3)], next: '3' });
    });
    const user = userEvent.setup();
    render(<HistoryTimeline deviceId="dev-1" pollIntervalMs={60_000} />);

    const list = await screen.findByRole('list', { name: 'Twin history, newest first' });
    expect(within(list).getAllByRole('listitem').map((li) => li.getAttribute('data-history-id'))).toEqual(['4', '3']);
    expect(within(list).getAllByRole('listitem')[0]).toHaveTextContent('- led');

    await user.click(screen.getByRole('button', { name: 'Load more' }));
    await waitFor(() => expect(within(list).getAllByRole('listitem')).toHaveLength(4));
    expect(within(list).getAllByRole('listitem')[2]).toHaveTextContent('by device');
    expect(screen.queryByRole('button', { name: 'Load more' })).toBeNull();
    expect(calls.find((call) => call.url.includes('cursor=3'))?.url).toBe('/customer/devices/dev-1/twin/history?limit=20&cursor=3');
  });

  it('puts new entries on top when re-read, keeping older pages', async () => {
    let newest = [item(2), item(1)];
    mockFetch((call) => (call.url.includes('/twin/history') ? json(200, { items: newest, next: null }) : json(503, {})));
    render(<HistoryTimeline deviceId="dev-1" pollIntervalMs={30} />);
    await screen.findByRole('list', { name: 'Twin history, newest first' });
    newest = [item(3, { actor: { type: 'device' }, kind: 'reported' }), item(2)];
    await waitFor(() => expect(screen.getAllByRole('listitem').map((li) => li.getAttribute('data-history-id'))).toEqual(['3', '2', '1']));
  });

  it('shows a readable error', async () => {
    mockFetch(() => json(403, { detail: 'no access' }));
    render(<HistoryTimeline deviceId="dev-1" pollIntervalMs={60_000} />);
    expect(await screen.findByRole('alert')).toHaveTextContent('You do not have permission to do this: no access');
  });
});
