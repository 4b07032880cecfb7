import { render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it } from 'vitest';
import type { Twin } from '../../services/api/devices';
import { eventStream, json, mockFetch, signIn } from '../../test/fetchMock';
import { DeviceTwinPanel } from './DeviceTwinPanel';

const NOW = new Date().toISOString();

function twin(overrides: Partial<Twin> = {}): Twin {
  return {
    device_id: 'dev-1',
    tenant_id: 'acme',
    desired: { led: 'green', interval: 30, fan: { speed: 3, mode: 'auto' } },
    reported: { led: 'red', interval: 30, fan: { speed: 1, mode: 'auto' } },
    delta: { led: 'green', fan: { speed: 3 } },
    desired_version: 4,
    reported_version: 3,
    sync_status: 'pending',
    shadow_updated_at: NOW,
    last_seen: NOW,
    connected: false,
    connected_at: null,
    disconnected_at: null,
    ...overrides,
  };
}

// Long enough that no second poll interferes with what a test asserts.
const renderPanel = () => render(<DeviceTwinPanel deviceId="dev-1" pollIntervalMs={60_000} />);

beforeEach(() => signIn());

describe('DeviceTwinPanel', () => {
  it('shows desired, reported and delta with the delta keys of desired highlighted', async () => {
    mockFetch(() => json(200, twin(), { ETag: '"4"' }));
    renderPanel();

    const desired = await screen.findByLabelText('Desired state');
    const marks = [...desired.querySelectorAll('mark.delta-key')];
    expect(marks.map((mark) => mark.getAttribute('data-delta-path'))).toEqual(['led', 'fan/speed']);
    expect(marks[0]).toHaveTextContent('"led" (not yet applied by the device)');
    // Equal keys and equal nested leaves are not marked.
    expect(desired).toHaveTextContent('"interval": 30');
    expect(desired.querySelector('[data-delta-path="interval"]')).toBeNull();
    expect(desired.querySelector('[data-delta-path="fan"]')).toBeNull();
    expect(desired.querySelector('[data-delta-path="fan/mode"]')).toBeNull();

    expect(screen.getByLabelText('Reported state')).toHaveTextContent('"led": "red"');
    expect(screen.getByLabelText('Reported state').querySelector('mark')).toBeNull();
    expect(screen.getByLabelText('Delta')).toHaveTextContent('"speed": 3');

    expect(screen.getByRole('status', { name: 'Sync status: pending' })).toBeInTheDocument();
    expect(screen.getByText('Desired version').nextElementSibling).toHaveTextContent('4');
    expect(screen.getByText('Reported version').nextElementSibling).toHaveTextContent('3');
    expect(screen.getByText('Last seen').nextElementSibling).toHaveTextContent(/\d+ s ago/);
  });

  it('says so when there is no delta, and shows a device never seen as "never"', async () => {
    mockFetch(() =>
      json(200, twin({ desired: {}, reported: {}, delta: {}, desired_version: 0, reported_version: 0, sync_status: 'stale', last_seen: null })),
    );
    renderPanel();
    expect(await screen.findByText(/No difference/)).toBeInTheDocument();
    expect(screen.getByRole('status', { name: 'Sync status: stale' })).toHaveTextContent('stale');
    expect(screen.getByText('Last seen').nextElementSibling).toHaveTextContent('never');
  });

  it('disables Save with an inline message while the patch is not valid JSON', async () => {
    const calls = mockFetch(() => json(200, twin()));
    const user = userEvent.setup();
    renderPanel();

    const editor = await screen.findByLabelText('Desired patch (JSON merge patch)');
    const save = screen.getByRole('button', { name: 'Save desired' });
    expect(save).toBeDisabled();
    expect(screen.getByText(/Save is disabled: Enter a JSON object/)).toBeInTheDocument();

    await user.type(editor, '{{"led": ');
    expect(save).toBeDisabled();
    expect(editor).toHaveAttribute('aria-invalid', 'true');
    expect(screen.getByText(/Invalid JSON:/)).toBeInTheDocument();

    await user.clear(editor);
    await user.type(editor, '[[1]');
    expect(save).toBeDisabled();
    expect(screen.getByText(/must be a JSON object, not an array/)).toBeInTheDocument();

    await user.click(save);
    expect(calls.filter((call) => call.method === 'PATCH')).toHaveLength(0);
  });

  it('sends the parsed patch with If-Match of the version being edited and shows the new version as pending', async () => {
    const calls = mockFetch((call) =>
      call.method === 'PATCH'
        ? json(200, twin({ desired: { ...twin().desired, led: 'blue' }, delta: { led: 'blue', fan: { speed: 3 } }, desired_version: 5 }))
        : json(200, twin(), { ETag: '"4"' }),
    );
    const user = userEvent.setup();
    renderPanel();

    const editor = await screen.findByLabelText('Desired patch (JSON merge patch)');
    await user.type(editor, '{{"led": "blue", "fan": {{"speed": null}}');
    const save = screen.getByRole('button', { name: 'Save desired' });
    expect(save).toBeEnabled();
    expect(screen.getByText('Ready to save.')).toBeInTheDocument();
    await user.click(save);

    await waitFor(() => expect(screen.getByText('Desired version').nextElementSibling).toHaveTextContent('5'));
    const patches = calls.filter((call) => call.method === 'PATCH');
    expect(patches).toHaveLength(1);
    expect(patches[0]).toMatchObject({
      url: '/customer/devices/dev-1/twin/desired',
      body: { desired: { led: 'blue', fan: { speed: null } } },
      headers: { 'if-match': '"4"', 'x-csrf-token': 'test-token', 'content-type': 'application/json' },
    });
    expect(screen.getByRole('status', { name: 'Sync status: pending' })).toBeInTheDocument();
    expect(screen.getByText(/Saved as desired version 5\. Waiting for the device to apply it\./)).toBeInTheDocument();
  });

  it('follows the device by polling: the badge turns synced when it reports, without a reload', async () => {
    let current = twin({ delta: {}, desired: {}, reported: {}, desired_version: 0, reported_version: 0, sync_status: 'synced' });
    mockFetch((call) => {
      if (call.method === 'PATCH') {
        current = { ...current, desired: { led: 'green' }, delta: { led: 'green' }, desired_version: 1, sync_status: 'pending' };
      }
      return json(200, current);
    });
    const user = userEvent.setup();
    render(<DeviceTwinPanel deviceId="dev-1" pollIntervalMs={50} />);

    await user.type(await screen.findByLabelText('Desired patch (JSON merge patch)'), '{{"led": "green"}');
    await user.click(screen.getByRole('button', { name: 'Save desired' }));
    expect(await screen.findByRole('status', { name: 'Sync status: pending' })).toBeInTheDocument();
    expect(screen.getByText(/Waiting for the device to apply it/)).toBeInTheDocument();

    // The device reports version 1.
    current = { ...current, reported: { led: 'green' }, delta: {}, reported_version: 1, sync_status: 'synced' };
    expect(await screen.findByRole('status', { name: 'Sync status: synced' })).toHaveTextContent('synced');
    expect(screen.getByText(/The device has applied it/)).toBeInTheDocument();
    expect(screen.getByLabelText('Desired state').querySelector('mark')).toBeNull();
  });

  it('on 412 loads the newer state, explains, and re-applies against the new version', async () => {
    let current = twin();
    const calls = mockFetch((call) => {
      if (call.method === 'PATCH') {
        if (call.headers['if-match'] !== `"${current.desired_version}"`) {
          return json(412, { detail: 'desired_version is 6, not 4' });
        }
        current = twin({ desired: { ...current.desired, led: 'blue' }, desired_version: current.desired_version + 1 });
        return json(200, current);
      }
      return json(200, current, { ETag: `"${current.desired_version}"` });
    });
    const user = userEvent.setup();
    renderPanel();

    const editor = await screen.findByLabelText('Desired patch (JSON merge patch)');
    await user.type(editor, '{{"led": "blue"}');
    // Someone else writes desired while this person is still editing.
    current = twin({ desired: { ...current.desired, interval: 60 }, desired_version: 6 });
    await user.click(screen.getByRole('button', { name: 'Save desired' }));

    const alert = await screen.findByRole('alert');
    expect(alert).toHaveTextContent('Someone else changed the desired state');
    expect(alert).toHaveTextContent('version 6');
    expect(screen.getByLabelText('Desired state')).toHaveTextContent('"interval": 60');

    await user.click(within(alert).getByRole('button', { name: 'Re-apply' }));
    await waitFor(() => expect(screen.getByText('Desired version').nextElementSibling).toHaveTextContent('7'));
    expect(screen.queryByText(/Someone else changed/)).toBeNull();
    const patches = calls.filter((call) => call.method === 'PATCH');
    expect(patches.map((call) => call.headers['if-match'])).toEqual(['"4"', '"6"']);
    expect(patches[1]?.body).toEqual({ desired: { led: 'blue' } });
  });

  it.each([
    [404, { detail: 'Device not found' }, 'This device does not exist, or it belongs to another tenant.'],
    [403, { detail: 'role viewer cannot do this' }, 'You do not have permission to do this: role viewer cannot do this'],
    [503, { detail: 'database unavailable' }, 'The service is temporarily unavailable. Try again shortly: database unavailable'],
    [500, null, 'The server failed (HTTP 500). Try again shortly.'],
  ])('turns a %i on load into a readable alert', async (status, body, message) => {
    mockFetch(() => json(status, body));
    renderPanel();
    expect(await screen.findByRole('alert')).toHaveTextContent(message);
  });

  it('turns a failed save into a readable alert (422 detail list)', async () => {
    mockFetch((call) =>
      call.method === 'PATCH'
        ? json(422, {
            detail: [{ loc: ['body', 'desired', 'fan'], msg: 'nesting deeper than 16 levels', type: 'value_error' }],
          })
        : json(200, twin()),
    );
    const user = userEvent.setup();
    renderPanel();
    await user.type(await screen.findByLabelText('Desired patch (JSON merge patch)'), '{{"fan": 1}');
    await user.click(screen.getByRole('button', { name: 'Save desired' }));
    expect(await screen.findByRole('alert')).toHaveTextContent(
      'The request was not valid: desired.fan: nesting deeper than 16 levels',
    );
  });

  it('shows a schema refusal (422 with pointer and rule) inline, next to the editor', async () => {
    mockFetch((call) =>
      call.method === 'PATCH'
        ? json(422, {
            detail: {
              message: "the desired state after this patch does not match the desired_schema of model 'lamp-v1'",
              model_id: 'lamp-v1',
              errors: [
                { pointer: '/led', rule: 'enum', message: "'purple' is not one of ['red', 'green']" },
                { pointer: '/fan/speed', rule: 'maximum', message: '9 is greater than the maximum of 5' },
              ],
            },
          })
        : json(200, twin()),
    );
    const user = userEvent.setup();
    renderPanel();
    const editor = await screen.findByLabelText('Desired patch (JSON merge patch)');
    await user.type(editor, '{{"led": "purple", "fan": {{"speed": 9}}');
    await user.click(screen.getByRole('button', { name: 'Save desired' }));

    const errors = await screen.findByRole('alert', { name: 'Schema validation errors' });
    // Inside the editor's form, right under the text it is about.
    expect(editor.closest('form')).toContainElement(errors);
    expect(errors).toHaveTextContent("does not match the desired_schema of model 'lamp-v1'");
    const items = within(errors).getAllByRole('listitem');
    expect(items.map((li) => li.getAttribute('data-pointer'))).toEqual(['/led', '/fan/speed']);
    expect(items[0]).toHaveTextContent("/led rule enum (not one of the allowed values): 'purple' is not one of ['red', 'green']");
    expect(items[1]).toHaveTextContent('/fan/speed rule maximum (too large): 9 is greater than the maximum of 5');
    // Nothing was saved; editing again clears the refusal.
    expect(screen.getByText('Desired version').nextElementSibling).toHaveTextContent('4');
    await user.type(editor, ' ');
    expect(screen.queryByRole('alert', { name: 'Schema validation errors' })).toBeNull();
  });

  it('follows the live event stream: a twin event for this device re-reads the twin', async () => {
    const stream = eventStream();
    let current = twin({ delta: { led: 'green' }, sync_status: 'pending' });
    const calls = mockFetch((call) => {
      if (call.url === '/customer/events') return stream.response;
      return json(200, current);
    });
    render(<DeviceTwinPanel deviceId="dev-1" pollIntervalMs={60_000} />);
    expect(await screen.findByRole('status', { name: 'Sync status: pending' })).toBeInTheDocument();
    await waitFor(() => expect(screen.getByText('Live')).toBeInTheDocument());
    const eventsCall = calls.find((call) => call.url === '/customer/events');
    expect(eventsCall?.headers).toMatchObject({ accept: 'text/event-stream' });
    expect(eventsCall?.headers.authorization).toBeUndefined();
    expect(eventsCall?.url).not.toContain('access_token');
    const twinReads = () => calls.filter((call) => call.url === '/customer/devices/dev-1/twin').length;
    const before = twinReads();

    // Another device's event changes nothing.
    stream.twin({ device_id: 'other', desired_version: 1, reported_version: 1, sync_status: 'synced' });
    current = { ...current, delta: {}, reported_version: 4, sync_status: 'synced' };
    stream.twin({ device_id: 'dev-1', desired_version: 4, reported_version: 4, sync_status: 'synced' });
    expect(await screen.findByRole('status', { name: 'Sync status: synced' })).toBeInTheDocument();
    expect(twinReads()).toBeGreaterThan(before);
  });

  it('shows a network failure as a readable alert', async () => {
    mockFetch(() => Promise.reject(new TypeError('Failed to fetch')));
    renderPanel();
    expect(await screen.findByRole('alert')).toHaveTextContent('Cannot reach the server');
  });
});
