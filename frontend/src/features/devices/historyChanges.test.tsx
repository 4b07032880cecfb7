import { render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it } from 'vitest';
import type { HistoryItem } from '../../services/api/devices';
import { json, mockFetch, signIn } from '../../test/fetchMock';
import { changeText, leafChanges, mergePatch, numericSeries } from './historyChanges';
import { HistoryTimeline } from './HistoryTimeline';

const at = (minutesAgo: number) => new Date(Date.now() - minutesAgo * 60_000).toISOString();
const desired = (id: number, version: number, patch: HistoryItem['patch'], email = 'ops@example.com'): HistoryItem => ({
  id,
  at: at(60 - id),
  kind: 'desired',
  actor: { type: 'user', email },
  version,
  patch,
});
const report = (id: number, patch: HistoryItem['patch']): HistoryItem => ({
  id,
  at: at(60 - id),
  kind: 'reported',
  actor: { type: 'device' },
  version: 1,
  patch,
});

beforeEach(() => signIn());

describe('leafChanges', () => {
  it('gives old → new per leaf from the older entries, and knows desired starts empty', () => {
    const items = [
      desired(3, 3, { fan: null, led: 'blue' }),
      desired(2, 2, { fan: { speed: 4 }, led: 'red' }),
      desired(1, 1, { fan: { speed: 3, mode: 'eco' } }),
    ];
    const changes = leafChanges(items);
    expect(changes.get(1)!.map(changeText)).toEqual(['+ fan.speed: 3', '+ fan.mode: "eco"']);
    expect(changes.get(2)!.map(changeText)).toEqual(['~ fan.speed: 3 → 4', '+ led: "red"']);
    expect(changes.get(3)!.map(changeText)).toEqual(['- fan (was {"speed":4,"mode":"eco"})', '~ led: "red" → "blue"']);
  });

  it('leaves the old value unknown where the loaded history does not reach', () => {
    const changes = leafChanges([desired(9, 7, { led: 'blue', fan: { speed: 2 } }), desired(8, 6, { led: 'red' })]);
    const [led, fan] = changes.get(9)!;
    expect(led).toMatchObject({ old: '"red"', oldKnown: true });
    expect(fan).toMatchObject({ oldKnown: false, old: undefined });
    expect(changes.get(8)![0]).toMatchObject({ oldKnown: false });
    // Reports have their own state.
    const reports = leafChanges([report(2, { t: 21.5 }), report(1, { t: 20 })]);
    expect(changeText(reports.get(2)![0]!)).toBe('~ t: 20 → 21.5');
  });

  it('merges as RFC 7396 and finds the numeric series of reports', () => {
    expect(mergePatch({ a: { b: 1, c: 2 } }, { a: { b: null, d: [1] } })).toEqual({ a: { c: 2, d: [1] } });
    const series = numericSeries([report(3, { t: 22, s: 'ok' }), report(2, { hum: { rel: 40 } }), desired(1, 1, { t: 5 })]);
    expect(series.map((point) => point.values)).toEqual([{ 'hum.rel': 40 }, { t: 22 }]);
  });
});

describe('HistoryTimeline filters and collapsed reports', () => {
  it('filters by kind and actor, and collapses runs of reports until asked', async () => {
    const items = [
      report(7, { t: 23 }),
      report(6, { t: 22 }),
      report(5, { t: 21 }),
      desired(4, 2, { led: 'blue' }, 'boss@example.com'),
      desired(3, 1, { led: 'red' }),
    ];
    mockFetch((call) => (call.url.includes('/twin/history') ? json(200, { items, next: null }) : json(503, {})));
    const user = userEvent.setup();
    render(<HistoryTimeline deviceId="dev-1" pollIntervalMs={60_000} />);
    const list = await screen.findByRole('list', { name: 'Twin history, newest first' });
    // Three reports in a row are one line until opened.
    expect(within(list).getAllByRole('listitem')).toHaveLength(3);
    expect(list).toHaveTextContent('3 reports from the device');
    expect(within(list).getByLabelText('Changes in desired version 2')).toHaveTextContent('~ led: "red" → "blue"');
    await user.click(within(list).getByRole('button', { name: 'Show 3 reports' }));
    await waitFor(() => expect(within(list).getAllByRole('listitem')).toHaveLength(6));
    expect(list).toHaveTextContent('~ t: 22 → 23');

    await user.selectOptions(screen.getByLabelText('Kind'), 'desired');
    expect(within(list).getAllByRole('listitem').map((li) => li.getAttribute('data-history-id'))).toEqual(['4', '3']);
    await user.selectOptions(screen.getByLabelText('Actor'), 'boss@example.com');
    expect(within(list).getAllByRole('listitem').map((li) => li.getAttribute('data-history-id'))).toEqual(['4']);
    await user.selectOptions(screen.getByLabelText('Kind'), 'reported');
    expect(screen.getByText(/No loaded entry matches these filters/)).toBeInTheDocument();
    await user.selectOptions(screen.getByLabelText('Kind'), 'all');
    await user.selectOptions(screen.getByLabelText('Actor'), 'all');
    await user.click(screen.getByLabelText(/Collapse runs of/));
    const again = screen.getByRole('list', { name: 'Twin history, newest first' });
    expect(within(again).getAllByRole('listitem')).toHaveLength(5);
  });
});
