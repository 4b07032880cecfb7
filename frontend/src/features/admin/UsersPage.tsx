import { useCallback, useEffect, useState } from 'react';
import { ROLES, createUser, deleteUser, listUsers, updateUser, type Role, type User } from '../../services/api/admin';
import { ApiError } from '../../services/api/client';

const message = (error: unknown): string => (error instanceof ApiError ? error.message : 'Something went wrong.');

const when = (value: string | null): string => (value ? new Date(value).toLocaleString() : 'never');

/** The tenant's operator accounts (admins): add, change role, disable, delete. */
export function UsersPage() {
  const [users, setUsers] = useState<User[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [role, setRole] = useState<Role>('viewer');
  const [busy, setBusy] = useState(false);

  const reload = useCallback(async (signal?: AbortSignal) => {
    try {
      setUsers(await listUsers(signal));
    } catch (caught) {
      if (caught instanceof DOMException && caught.name === 'AbortError') return;
      setError(message(caught));
    }
  }, []);

  useEffect(() => {
    const controller = new AbortController();
    void reload(controller.signal);
    return () => controller.abort();
  }, [reload]);

  const act = async (work: () => Promise<unknown>, done: string) => {
    setBusy(true);
    setError(null);
    setNotice(null);
    try {
      await work();
      setNotice(done);
      await reload();
    } catch (caught) {
      setError(message(caught));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="page admin-page">
      <h1>Users</h1>
      {error && (
        <p role="alert" className="alert alert--error">
          {error}
        </p>
      )}
      {notice && (
        <p role="status" className="alert alert--success">
          {notice}
        </p>
      )}
      <form
        className="admin-form"
        aria-label="Add a user"
        onSubmit={(event) => {
          event.preventDefault();
          void act(async () => {
            await createUser({ email: email.trim(), password, role });
            setEmail('');
            setPassword('');
          }, `Added ${email.trim()}.`);
        }}
      >
        <label>
          Email
          <input type="email" value={email} onChange={(event) => setEmail(event.target.value)} required />
        </label>
        <label>
          Password
          <input
            type="password"
            autoComplete="new-password"
            value={password}
            onChange={(event) => setPassword(event.target.value)}
            required
          />
        </label>
        <label>
          Role
          <select value={role} onChange={(event) => setRole(event.target.value as Role)}>
            {ROLES.map((value) => (
              <option key={value} value={value}>
                {value}
              </option>
            ))}
          </select>
        </label>
        <button type="submit" disabled={busy}>
          Add user
        </button>
      </form>
      {users === null ? (
        !error && <p>Loading…</p>
      ) : (
        <table className="device-table admin-table">
          <thead>
            <tr>
              <th>Email</th>
              <th>Role</th>
              <th>Status</th>
              <th>Last sign-in</th>
              <th>
                <span className="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {users.map((user) => (
              <tr key={user.user_id}>
                <td>{user.email}</td>
                <td>
                  <select
                    aria-label={`Role of ${user.email}`}
                    value={user.role}
                    disabled={busy}
                    onChange={(event) => {
                      const next = event.target.value as Role;
                      void act(() => updateUser(user.user_id, { role: next }), `${user.email} is now ${next}.`);
                    }}
                  >
                    {ROLES.map((value) => (
                      <option key={value} value={value}>
                        {value}
                      </option>
                    ))}
                  </select>
                </td>
                <td>{user.disabled ? 'disabled' : 'active'}</td>
                <td>{when(user.last_login_at)}</td>
                <td className="admin-actions">
                  <button
                    type="button"
                    disabled={busy}
                    onClick={() =>
                      void act(
                        () => updateUser(user.user_id, { disabled: !user.disabled }),
                        `${user.email} is ${user.disabled ? 'enabled' : 'disabled'}.`,
                      )
                    }
                  >
                    {user.disabled ? `Enable ${user.email}` : `Disable ${user.email}`}
                  </button>
                  <button
                    type="button"
                    className="danger"
                    disabled={busy}
                    onClick={() => {
                      if (window.confirm(`Delete ${user.email}? Their sessions end at once.`)) {
                        void act(() => deleteUser(user.user_id), `Deleted ${user.email}.`);
                      }
                    }}
                  >
                    {`Delete ${user.email}`}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  );
}
