import { describe, expect, it } from 'vitest';
import { json, mockFetch, signIn } from '../../test/fetchMock';
import { formatDetail } from './client';
import {
  ApiError,
  createDevice,
  getHistory,
  getSummary,
  getToken,
  getTwin,
  listDevices,
  login,
  parseEtagVersion,
  schemaErrorDetail,
} from './devices';

describe('devices API client', () => {
  it('signs in to a cookie session with an OAuth2 password form and keeps its CSRF token', async () => {
    const calls = mockFetch(() =>
      json(200, { user_id: 1, email: 'ops@example.com', tenant_id: 't', role: 'admin', csrf_token: 'abc', expires_in: 3600 }),
    );
    await login('ops@example.com', 'p@ss word');
    expect(calls[0]).toMatchObject({
      method: 'POST',
      url: '/auth/session',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'username=ops%40example.com&password=p%40ss+word',
    });
    expect(calls[0]?.headers.authorization).toBeUndefined();
    expect(getToken()).toBe('abc');
  });

  it('says "Wrong email or password." for bad credentials', async () => {
    mockFetch(() => json(401, { detail: 'Incorrect username or password' }));
    await expect(login('a@b.c', 'nope')).rejects.toThrow('Wrong email or password.');
    expect(getToken()).toBeNull();
  });

  it('treats an expired token as signed out', async () => {
    localStorage.setItem('iotcloud.token', JSON.stringify({ accessToken: 'old', expiresAt: Date.now() - 1 }));
    expect(getToken()).toBeNull();
    const calls = mockFetch(() => json(200, { items: [], next: null }));
    await expect(listDevices()).rejects.toMatchObject({ status: 401 });
    // Only the sign-out of the stale cookie session goes out.
    expect(calls.map((call) => `${call.method} ${call.url}`)).toEqual(['DELETE /auth/session']);
  });

  it('drops the token on a 401', async () => {
    signIn();
    mockFetch(() => json(401, { detail: 'Token expired' }));
    const error = await listDevices().catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).message).toBe('Your session has expired. Please sign in again.');
    expect(getToken()).toBeNull();
  });

  it('lists with limit, cursor and status filter as query parameters on the session', async () => {
    signIn();
    const calls = mockFetch(() => json(200, { items: [], next: null }));
    await listDevices({ limit: 20, cursor: 'c/2', sync_status: 'pending' });
    await listDevices({ limit: 20, cursor: null, sync_status: null });
    expect(calls.map((call) => call.url)).toEqual([
      '/customer/devices?limit=20&cursor=c%2F2&sync_status=pending',
      '/customer/devices?limit=20',
    ]);
    expect(calls[0]?.headers.authorization).toBeUndefined(); // the session cookie signs in
    expect(calls[0]?.headers['x-csrf-token']).toBeUndefined(); // reads need no CSRF token
  });

  it('creates a device, sending only the fields given', async () => {
    signIn();
    const calls = mockFetch(() => json(201, { device_id: 'd-1', tenant_id: 't', provision_token: 'tok-x' }));
    await expect(createDevice({ name: 'Pump' })).resolves.toEqual({ device_id: 'd-1', tenant_id: 't', provision_token: 'tok-x' });
    expect(calls[0]).toMatchObject({ method: 'POST', url: '/customer/devices', body: { name: 'Pump' } });
  });

  it('reads the twin and the version in its ETag, escaping the device id', async () => {
    signIn();
    const calls = mockFetch(() => json(200, { device_id: 'a:b c', desired_version: 7 }, { ETag: '"7"' }));
    const result = await getTwin('a:b c');
    expect(result.etagVersion).toBe(7);
    expect(calls[0]?.url).toBe('/customer/devices/a%3Ab%20c/twin');
    expect(parseEtagVersion('W/"12"')).toBe(12);
    expect(parseEtagVersion(null)).toBeNull();
  });

  it('returns null for a fleet summary the server does not offer yet', async () => {
    signIn();
    mockFetch(() => json(404, { detail: 'Not Found' }));
    await expect(getSummary()).resolves.toBeNull();
  });

  it.each([
    [409, { detail: 'version conflict' }, 'Conflict with the current state: version conflict'],
    [412, { detail: 'desired_version is 3' }, 'Someone else changed the desired state: desired_version is 3'],
    [413, { detail: 'desired is 70000 bytes, limit 65536' }, 'Too large: desired is 70000 bytes, limit 65536'],
    [422, { detail: [{ loc: ['query', 'limit'], msg: 'must be <= 500', type: 'x' }] }, 'The request was not valid: limit: must be <= 500'],
    [422, { detail: { message: 'bad pointer /a/b' } }, 'The request was not valid: bad pointer /a/b'],
    [502, 'not json', 'The server failed (HTTP 502). Try again shortly.'],
  ])('turns %i into a readable ApiError', async (status, body, message) => {
    signIn();
    mockFetch(() =>
      typeof body === 'string' ? new Response('<html>bad gateway</html>', { status }) : json(status, body),
    );
    await expect(listDevices()).rejects.toMatchObject({ status, message });
  });

  it('sends list filters and history paging as query parameters, and reads schema refusals', async () => {
    signIn();
    const calls = mockFetch(() => json(200, { items: [], next: null }));
    await listDevices({ limit: 20, tag: 'site:berlin', q: 'pump', model_id: 'm1', sync_status: 'stale' });
    await getHistory('a/b', { limit: 20, cursor: '41' });
    expect(calls.map((call) => call.url)).toEqual([
      '/customer/devices?limit=20&sync_status=stale&tag=site%3Aberlin&model_id=m1&q=pump',
      '/customer/devices/a%2Fb/twin/history?limit=20&cursor=41',
    ]);
    const detail = { message: 'does not match', errors: [{ pointer: '', rule: 'required', message: "'led' is a required property" }] };
    const error = new ApiError(422, 'x', detail);
    expect(schemaErrorDetail(error)).toEqual({ message: 'does not match', model_id: undefined, errors: detail.errors });
    expect(schemaErrorDetail(new ApiError(422, 'x', [{ loc: ['body'], msg: 'bad' }]))).toBeNull();
    expect(formatDetail(detail)).toBe("does not match: (whole document) [required] 'led' is a required property");
  });

  it('formats any detail shape', () => {
    expect(formatDetail('plain')).toBe('plain');
    expect(formatDetail([{ loc: ['body', 'desired'], msg: 'not an object' }, { msg: 'second' }])).toBe(
      'desired: not an object; second',
    );
    expect(formatDetail({ pointer: '/x' })).toBe('{"pointer":"/x"}');
    expect(formatDetail(null)).toBe('');
  });
});
