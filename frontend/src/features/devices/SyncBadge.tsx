import type { SyncStatus } from '../../services/api/devices';

const DESCRIPTIONS: Record<SyncStatus, string> = {
  synced: 'The device has applied the latest desired state',
  pending: 'The device has not yet applied the latest desired state',
  stale: 'The device has not been seen recently (or ever)',
  rejected: 'The device refused the latest desired state',
};

interface SyncBadgeProps {
  status: SyncStatus;
  /** Announce changes to screen readers (use for the one badge a page is about). */
  live?: boolean;
  /** Why a rejected device refused, shown in the badge. */
  message?: string | null;
}

/** Sync status as colour AND word, so it reads without colour vision too. */
export function SyncBadge({ status, live = false, message = null }: SyncBadgeProps) {
  return (
    <span
      className={`sync-badge sync-badge--${status}`}
      title={message ? `${DESCRIPTIONS[status]}: ${message}` : DESCRIPTIONS[status]}
      {...(live ? { role: 'status', 'aria-live': 'polite' as const, 'aria-label': `Sync status: ${status}` } : {})}
    >
      <span className="sync-badge__dot" aria-hidden="true" />
      {status}
      {message ? <span className="sync-badge__message">{message}</span> : null}
    </span>
  );
}
