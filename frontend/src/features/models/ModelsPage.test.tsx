import { fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it } from 'vitest';
import { json, mockFetch, signIn } from '../../test/fetchMock';
import { ModelsPage } from './ModelsPage';

const thermostat = {
  model_id: 'thermostat',
  desired_schema: { type: 'object', properties: { target: { type: 'number' } } },
  reported_schema: null,
  created_at: '2026-01-01T00:00:00Z',
  updated_at: '2026-01-01T00:00:00Z',
};

beforeEach(() => signIn());

describe('ModelsPage', () => {
  it('lists models, validates a new schema as typed, and creates it', async () => {
    const calls = mockFetch((call) => {
      if (call.url.startsWith('/customer/models?')) return json(200, { items: [thermostat], next: null });
      if (call.method === 'POST') return json(201, { ...thermostat, model_id: 'fan' });
      if (call.url === '/customer/models/fan') return json(200, { ...thermostat, model_id: 'fan', device_count: 0 });
      if (call.url.startsWith('/customer/devices')) return json(200, { items: [], next: null });
      return json(404, {});
    });
    const user = userEvent.setup();
    render(<ModelsPage />);
    expect(await screen.findByRole('button', { name: 'thermostat' })).toBeInTheDocument();
    await user.click(screen.getByRole('button', { name: 'New model' }));
    const editor = screen.getByRole('region', { name: 'New model' });
    const create = within(editor).getByRole('button', { name: 'Create model' });
    expect(create).toBeDisabled();
    expect(editor).toHaveTextContent('A model id is 1 to 128 letters');
    await user.type(within(editor).getByLabelText('Model id'), 'fan');
    fireEvent.change(within(editor).getByLabelText('Desired schema (JSON Schema)'), { target: { value: '{"type": ' } });
    expect(editor).toHaveTextContent('The desired schema is not valid JSON');
    fireEvent.change(within(editor).getByLabelText('Desired schema (JSON Schema)'), { target: { value: '[1]' } });
    expect(editor).toHaveTextContent('must be a JSON object');
    fireEvent.change(within(editor).getByLabelText('Desired schema (JSON Schema)'), { target: { value: '{"type": "object"}' } });
    await user.click(create);
    await waitFor(() => expect(calls.some((call) => call.method === 'POST')).toBe(true));
    expect(calls.find((call) => call.method === 'POST')?.body).toEqual({ model_id: 'fan', desired_schema: { type: 'object' }, reported_schema: null });
    expect(await screen.findByRole('region', { name: 'Model fan' })).toBeInTheDocument();
  });

  it('names the devices a changed schema would break, and assigns the model to devices', async () => {
    const calls = mockFetch((call) => {
      if (call.url.startsWith('/customer/models?')) return json(200, { items: [thermostat], next: null });
      if (call.url === '/customer/models/thermostat' && call.method === 'GET') return json(200, { ...thermostat, device_count: 1 });
      const job = { job_id: 'j1', model_id: 'thermostat', total: 1, created_by: 'a@b', created_at: '', finished_at: null };
      if (call.method === 'PUT') return json(202, { ...job, status: 'running', checked: 0, invalid_count: 0, devices: [] });
      if (call.url === '/customer/models/thermostat/revalidations/j1') {
        return json(200, {
          ...job,
          status: 'refused',
          checked: 1,
          invalid_count: 1,
          devices: [{ device_id: 'th-1', errors: [{ pointer: '/target', rule: 'type', message: "'hot' is not of type 'number'" }] }],
        });
      }
      if (call.method === 'PATCH') {
        return call.url.endsWith('/th-9') ? json(404, { detail: "device 'th-9' not found" }) : json(200, { device_id: 'th-2', model_id: 'thermostat' });
      }
      if (call.url.startsWith('/customer/devices')) return json(200, { items: [{ device_id: 'th-1' }], next: null });
      return json(404, {});
    });
    const user = userEvent.setup();
    render(<ModelsPage />);
    await user.click(await screen.findByRole('button', { name: 'thermostat' }));
    const editor = await screen.findByRole('region', { name: 'Model thermostat' });
    expect(editor).toHaveTextContent('1 device(s) use this model');
    fireEvent.change(within(editor).getByLabelText('Desired schema (JSON Schema)'), {
      target: { value: '{"type": "object", "properties": {"target": {"type": "number"}}, "required": ["target"]}' },
    });
    await user.click(within(editor).getByRole('button', { name: 'Save schema' }));
    const broken = await within(editor).findByRole('list', { name: 'Devices that break the schema' });
    expect(broken).toHaveTextContent("th-1: /target 'hot' is not of type 'number'");

    const devices = screen.getByRole('region', { name: 'Devices of model thermostat' });
    await user.type(within(devices).getByLabelText(/Assign to devices/), 'th-2, th-9');
    await user.click(within(devices).getByRole('button', { name: 'Assign model' }));
    const results = await within(devices).findByRole('list', { name: 'Assignment results' });
    expect(results).toHaveTextContent('th-2: assigned');
    expect(results).toHaveTextContent("th-9: Not found: device 'th-9' not found");
    expect(calls.filter((call) => call.method === 'PATCH').map((call) => call.body)).toEqual([{ model_id: 'thermostat' }, { model_id: 'thermostat' }]);
  });
});
