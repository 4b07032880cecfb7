import { render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it } from 'vitest';
import { getToken } from '../services/api/devices';
import { json, mockFetch, signIn } from '../test/fetchMock';
import { App } from './App';

beforeEach(() => window.history.replaceState(null, '', '/'));

describe('App', () => {
  it('asks for sign-in, shows an error for bad credentials, then opens the page asked for', async () => {
    window.history.replaceState(null, '', '/devices/dev-1');
    mockFetch((call) => {
      if (call.url === '/auth/session') {
        return String(call.body).includes('password=right')
          ? json(200, { user_id: 1, email: 'ops@example.com', tenant_id: 't', role: 'admin', csrf_token: 'tkn', expires_in: 60 })
          : json(401, { detail: 'Incorrect username or password' });
      }
      return json(404, { detail: 'Device not found' });
    });
    const user = userEvent.setup();
    render(<App />);

    expect(window.location.pathname).toBe('/signin');
    await user.type(screen.getByLabelText('Email'), 'ops@example.com');
    await user.type(screen.getByLabelText('Password'), 'wrong');
    await user.click(screen.getByRole('button', { name: 'Sign in' }));
    expect(await screen.findByRole('alert')).toHaveTextContent('Wrong email or password.');

    await user.clear(screen.getByLabelText('Password'));
    await user.type(screen.getByLabelText('Password'), 'right');
    await user.click(screen.getByRole('button', { name: 'Sign in' }));
    expect(await screen.findByRole('button', { name: 'Sign out' })).toBeInTheDocument();
    expect(window.location.pathname).toBe('/devices/dev-1');
    // An unknown device: said once, with no actions on it.
    expect(await screen.findByText(/in your tenant: it was never created/)).toBeInTheDocument();
    expect(screen.queryByRole('button', { name: 'Delete device' })).toBeNull();
  });

  it('turns the device page into "no such device" when the device is deleted while open', async () => {
    signIn();
    window.history.replaceState(null, '', '/devices/dev-2');
    mockFetch((call) => {
      if (call.url === '/customer/devices/dev-2') return json(200, { device_id: 'dev-2', name: 'x', tags: {}, model_id: null });
      if (call.url.startsWith('/customer/devices/dev-2/twin')) return json(404, { detail: "device 'dev-2' not found" });
      return json(404, {});
    });
    render(<App />);
    expect(await screen.findByText(/in your tenant: it was never created, it was deleted/)).toBeInTheDocument();
    expect(screen.queryByRole('button', { name: 'Delete device' })).toBeNull();
  });

  it('shows who is signed in and disables what the role may not do, with the reason', async () => {
    signIn();
    mockFetch((call) => {
      if (call.url === '/auth/me') {
        return json(200, {
          user_id: 1,
          email: 'watcher@acme.test',
          tenant_id: 'acme',
          tenant_name: 'Acme Corp',
          role: 'viewer',
          permissions: { write_desired: false, run_bulk_jobs: false, manage_devices: false, manage_models: false, manage_users: false },
        });
      }
      return json(200, { items: [], next: null });
    });
    render(<App />);
    const who = await screen.findByLabelText('Signed in as');
    expect(who).toHaveTextContent('watcher@acme.test');
    expect(who).toHaveTextContent('Acme Corp');
    expect(who).toHaveTextContent('viewer');
    const add = await screen.findByRole('button', { name: 'Add device' });
    expect(add).toBeDisabled();
    expect(add).toHaveAttribute('title', 'Needs the admin role; you are signed in as viewer.');
    expect(screen.getByRole('button', { name: 'Set desired for matching devices' })).toHaveAttribute(
      'title',
      'Needs the operator role; you are signed in as viewer.',
    );
  });

  it('goes back to sign-in when the API says the token is no longer valid', async () => {
    signIn();
    mockFetch(() => json(401, { detail: 'Signature has expired' }));
    render(<App />);
    expect(await screen.findByRole('button', { name: 'Sign in' })).toBeInTheDocument();
    expect(getToken()).toBeNull();
    expect(window.location.pathname).toBe('/signin');
  });

  it('signs out from the header', async () => {
    signIn();
    mockFetch(() => json(200, { items: [], next: null }));
    const user = userEvent.setup();
    render(<App />);
    await user.click(screen.getByRole('button', { name: 'Sign out' }));
    expect(screen.getByRole('button', { name: 'Sign in' })).toBeInTheDocument();
    expect(getToken()).toBeNull();
  });
});
