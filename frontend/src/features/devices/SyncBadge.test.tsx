import { render, screen } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import { SYNC_STATUSES } from '../../services/api/devices';
import { SyncBadge } from './SyncBadge';

describe('SyncBadge', () => {
  it.each(SYNC_STATUSES)('shows %s as a word and a colour class', (status) => {
    const { container } = render(<SyncBadge status={status} />);
    const badge = container.querySelector('.sync-badge');
    expect(badge).toHaveTextContent(status);
    expect(badge).toHaveClass(`sync-badge--${status}`);
    for (const other of SYNC_STATUSES.filter((s) => s !== status)) {
      expect(badge).not.toHaveClass(`sync-badge--${other}`);
    }
  });

  it('announces itself as the sync status when live', () => {
    render(<SyncBadge status="pending" live />);
    expect(screen.getByRole('status', { name: 'Sync status: pending' })).toHaveTextContent('pending');
  });

  it('is not a live region by default (a fleet table has many)', () => {
    render(<SyncBadge status="synced" />);
    expect(screen.queryByRole('status')).toBeNull();
  });
});

describe('SyncBadge rejected', () => {
  it('is red and carries the message', () => {
    const { container } = render(<SyncBadge status="rejected" message="version 3 (E1): no space" live />);
    const badge = container.querySelector('.sync-badge');
    expect(badge).toHaveClass('sync-badge--rejected');
    expect(badge).toHaveTextContent('rejectedversion 3 (E1): no space');
    expect(badge).toHaveAttribute('title', 'The device refused the latest desired state: version 3 (E1): no space');
  });
});
