import { useCallback, useEffect, useState } from 'react';
import { listAudit, type AuditEntry } from '../../services/api/admin';
import { ApiError } from '../../services/api/client';

const message = (error: unknown): string => (error instanceof ApiError ? error.message : 'Something went wrong.');

function detailText(detail: Record<string, unknown>): string {
  return Object.keys(detail).length === 0 ? '' : JSON.stringify(detail);
}

/** The tenant's audit log (admins), newest first, filtered by actor and action. */
export function AuditPage() {
  const [entries, setEntries] = useState<AuditEntry[] | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [actor, setActor] = useState('');
  const [action, setAction] = useState('');
  const [filters, setFilters] = useState({ actor: '', action: '' });

  const load = useCallback(
    async (cursor: string | null, signal?: AbortSignal) => {
      try {
        const page = await listAudit({ cursor, actor: filters.actor, action: filters.action }, signal);
        setEntries((previous) => (cursor && previous ? [...previous, ...page.items] : page.items));
        setNext(page.next);
        setError(null);
      } catch (caught) {
        if (caught instanceof DOMException && caught.name === 'AbortError') return;
        setError(message(caught));
      }
    },
    [filters],
  );

  useEffect(() => {
    const controller = new AbortController();
    void load(null, controller.signal);
    return () => controller.abort();
  }, [load]);

  return (
    <main className="page admin-page">
      <h1>Audit log</h1>
      <form
        className="admin-form"
        aria-label="Filter the audit log"
        onSubmit={(event) => {
          event.preventDefault();
          setFilters({ actor: actor.trim(), action: action.trim() });
        }}
      >
        <label>
          Actor
          <input value={actor} placeholder="e-mail" onChange={(event) => setActor(event.target.value)} />
        </label>
        <label>
          Action
          <input value={action} placeholder="device. or user.delete" onChange={(event) => setAction(event.target.value)} />
        </label>
        <button type="submit">Filter</button>
      </form>
      {error && (
        <p role="alert" className="alert alert--error">
          {error}
        </p>
      )}
      {entries === null ? (
        !error && <p>Loading…</p>
      ) : entries.length === 0 ? (
        <p>No entries.</p>
      ) : (
        <table className="device-table admin-table">
          <thead>
            <tr>
              <th>When</th>
              <th>Actor</th>
              <th>Action</th>
              <th>Target</th>
              <th>Address</th>
              <th>Detail</th>
            </tr>
          </thead>
          <tbody>
            {entries.map((entry) => (
              <tr key={entry.id}>
                <td>{new Date(entry.at).toLocaleString()}</td>
                <td>{entry.actor}</td>
                <td>{entry.action}</td>
                <td>{entry.target}</td>
                <td>{entry.ip ?? ''}</td>
                <td className="mono">{detailText(entry.detail)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {next && (
        <button type="button" onClick={() => void load(next)}>
          Load more
        </button>
      )}
    </main>
  );
}
