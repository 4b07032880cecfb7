import type { SyncStatus } from '../../services/api/devices';

const DESCRIPTIONS: Record<SyncStatus, string> = {
  synced: 'The device has applied the latest desired state',
  pending: 'The device has not yet applied the latest desired state',
  stale: 'The device has not been seen recently (or ever)',
};

interface SyncBadgeProps {
  status: SyncStatus;
  /** Announce changes to screen readers (use for the one badge a page is about). */
  live?: boolean;
}

/** Sync status as colour AND word, so it reads without colour vision too. */
export function SyncBadge({ status, live = false }: SyncBadgeProps) {
  return (
    <span
      className={`sync-badge sync-badge--${status}`}
      title={DESCRIPTIONS[status]}
      {...(live ? { role: 'status', 'aria-live': 'polite' as const, 'aria-label': `Sync status: ${status}` } : {})}
    >
      <span className="sync-badge__dot" aria-hidden="true" />
      {status}
    </span>
  );
}
