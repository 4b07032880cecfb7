import { render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it } from 'vitest';
import { json, mockFetch, signIn } from '../../test/fetchMock';
import { DeviceProfileCard } from './DeviceProfileCard';

const profile = (overrides = {}) => ({
  device_id: 'dev-1',
  name: 'Pump',
  tags: { site: 'berlin' },
  sync_status: 'synced',
  desired_version: 1,
  reported_version: 1,
  last_seen: null,
  model_id: null,
  ...overrides,
});
const model = (id: string) => ({ model_id: id, desired_schema: {}, reported_schema: null, created_at: '', updated_at: '' });

beforeEach(() => signIn());

describe('DeviceProfileCard', () => {
  it('adds and removes tags and sets the model with PATCH /customer/devices/{id}', async () => {
    let current = profile();
    const calls = mockFetch((call) => {
      if (call.url.startsWith('/customer/models')) return json(200, { items: [model('lamp-v1'), model('lamp-v2')], next: null });
      if (call.method === 'PATCH') {
        const body = call.body as { tags?: Record<string, string | null>; model_id?: string | null };
        const tags: Record<string, string> = { ...current.tags };
        for (const [key, value] of Object.entries(body.tags ?? {})) {
          if (value === null) delete tags[key];
          else tags[key] = value;
        }
        current = { ...current, tags, ...('model_id' in body ? { model_id: body.model_id ?? null } : {}) } as typeof current;
      }
      return json(200, current);
    });
    const user = userEvent.setup();
    render(<DeviceProfileCard deviceId="dev-1" />);

    const tags = await screen.findByRole('list', { name: 'Tags' });
    expect(tags).toHaveTextContent('site:berlin');
    await user.type(screen.getByLabelText('Tag key'), 'bad:key');
    expect(screen.getByRole('button', { name: 'Add tag' })).toBeDisabled();
    expect(screen.getByText(/no ":"/)).toBeInTheDocument();
    await user.clear(screen.getByLabelText('Tag key'));
    await user.type(screen.getByLabelText('Tag key'), 'room');
    await user.type(screen.getByLabelText('Tag value'), 'lab');
    await user.click(screen.getByRole('button', { name: 'Add tag' }));
    await waitFor(() => expect(screen.getByRole('list', { name: 'Tags' })).toHaveTextContent('room:lab'));

    await user.click(screen.getByRole('button', { name: 'Remove tag site' }));
    await waitFor(() => expect(screen.getByRole('list', { name: 'Tags' })).not.toHaveTextContent('site:berlin'));

    await user.selectOptions(screen.getByLabelText('Model'), 'lamp-v2');
    await waitFor(() => expect(screen.getByLabelText('Model')).toHaveValue('lamp-v2'));

    expect(calls.filter((call) => call.method === 'PATCH').map((call) => [call.url, call.body])).toEqual([
      ['/customer/devices/dev-1', { tags: { room: 'lab' } }],
      ['/customer/devices/dev-1', { tags: { site: null } }],
      ['/customer/devices/dev-1', { model_id: 'lamp-v2' }],
    ]);
  });

  it('explains a model the current desired state does not fit, and a refused change', async () => {
    mockFetch((call) => {
      if (call.url.startsWith('/customer/models')) return json(200, { items: [model('strict')], next: null });
      if (call.method === 'PATCH' && (call.body as { model_id?: string }).model_id === 'strict') {
        return json(422, {
          detail: {
            message: "the device's current desired state does not match the desired_schema of model 'strict'",
            errors: [{ pointer: '/led', rule: 'type', message: "'x' is not of type 'integer'" }],
          },
        });
      }
      if (call.method === 'PATCH') return json(403, { detail: 'this needs the admin role; you are operator' });
      return json(200, profile());
    });
    const user = userEvent.setup();
    render(<DeviceProfileCard deviceId="dev-1" />);
    await user.selectOptions(await screen.findByLabelText('Model'), 'strict');
    const errors = await screen.findByRole('alert', { name: 'Schema validation errors' });
    expect(errors).toHaveTextContent('Model not changed');
    expect(within(errors).getByRole('listitem')).toHaveTextContent("/led rule type (wrong type): 'x' is not of type 'integer'");

    await user.click(screen.getByRole('button', { name: 'Remove tag site' }));
    expect(await screen.findByText('You do not have permission to do this: this needs the admin role; you are operator')).toBeInTheDocument();
  });
});
