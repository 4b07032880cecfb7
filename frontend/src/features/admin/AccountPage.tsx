import { useState } from 'react';
import { changePassword } from '../../services/api/admin';
import { ApiError } from '../../services/api/client';

/** Your own account: change your password (every other session of yours ends). */
export function AccountPage() {
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState(false);
  const [busy, setBusy] = useState(false);

  const submit = async () => {
    setBusy(true);
    setError(null);
    setDone(false);
    try {
      await changePassword(current, next);
      setCurrent('');
      setNext('');
      setDone(true);
    } catch (caught) {
      setError(caught instanceof ApiError ? caught.message : 'Changing the password failed.');
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="page admin-page">
      <h1>Account</h1>
      <form
        className="admin-form"
        aria-label="Change your password"
        onSubmit={(event) => {
          event.preventDefault();
          void submit();
        }}
      >
        <label>
          Current password
          <input
            type="password"
            autoComplete="current-password"
            value={current}
            onChange={(event) => setCurrent(event.target.value)}
            required
          />
        </label>
        <label>
          New password
          <input
            type="password"
            autoComplete="new-password"
            value={next}
            onChange={(event) => setNext(event.target.value)}
            required
          />
        </label>
        <button type="submit" disabled={busy}>
          Change password
        </button>
      </form>
      {error && (
        <p role="alert" className="alert alert--error">
          {error}
        </p>
      )}
      {done && (
        <p role="status" className="alert alert--success">
          Password changed. Your other sessions have been signed out.
        </p>
      )}
    </main>
  );
}
