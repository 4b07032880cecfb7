import { useCallback, useEffect, useId, useState } from 'react';
import { useCan } from '../../app/me';
import { devicePath, Link } from '../../app/router';
import {
  ApiError,
  listDevices,
  listModels,
  updateDevice,
  type DeviceModel,
  type DeviceSummary,
} from '../../services/api/devices';
import {
  breakingDevices,
  createModel,
  getModel,
  parseSchema,
  replaceModel,
  type BreakingDevice,
  type DeviceModelWithCount,
} from '../../services/api/models';

const MODEL_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const STARTER_SCHEMA = '{\n  "type": "object",\n  "properties": {\n    "led": {"enum": ["red", "green", "off"]}\n  }\n}';
const messageOf = (error: unknown, fallback: string): string => (error instanceof Error ? error.message : fallback);
const pretty = (value: unknown): string => (value == null ? '' : JSON.stringify(value, null, 2));

/** Device models: JSON Schemas for the twin, which devices use them, and assigning them. */
export function ModelsPage() {
  const [models, setModels] = useState<DeviceModel[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [selected, setSelected] = useState<string | 'new' | null>(null);
  const canEdit = useCan('manage_models');

  const reload = useCallback(async () => {
    try {
      setModels((await listModels()).items);
      setError(null);
    } catch (caught) {
      setError(messageOf(caught, 'Loading the models failed.'));
    }
  }, []);
  useEffect(() => {
    void reload();
  }, [reload]);

  return (
    <main className="page models-page">
      <div className="page-heading">
        <h1>Device models</h1>
        <div className="page-actions">
          <button type="button" className="primary" disabled={!canEdit.allowed} title={canEdit.reason || undefined} onClick={() => setSelected('new')}>
            New model
          </button>
        </div>
      </div>
      <p className="hint">
        A model is a JSON Schema for a device&apos;s desired state (writes that break it are refused) and, optionally, for its
        reported state (reports that break it are accepted and flagged).
      </p>
      {error !== null && (
        <div role="alert" className="alert alert--error">
          {error}
        </div>
      )}
      {models === null ? (
        error === null && <p className="hint">Loading models…</p>
      ) : models.length === 0 ? (
        <p className="empty">No models defined yet.{canEdit.allowed ? ' Use "New model" to define one.' : ''}</p>
      ) : (
        <table className="device-table models-table" aria-label="Models">
          <thead>
            <tr>
              <th scope="col">Model</th>
              <th scope="col">Reported schema</th>
              <th scope="col">Updated</th>
            </tr>
          </thead>
          <tbody>
            {models.map((model) => (
              <tr key={model.model_id} className={model.model_id === selected ? 'selected' : undefined}>
                <td>
                  <button type="button" className="link-button" onClick={() => setSelected(model.model_id)}>
                    {model.model_id}
                  </button>
                </td>
                <td>{model.reported_schema ? 'yes' : 'no'}</td>
                <td>{new Date(model.updated_at).toLocaleString()}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {selected === 'new' && (
        <ModelEditor
          key="new"
          model={null}
          onSaved={(modelId) => {
            void reload();
            setSelected(modelId);
          }}
        />
      )}
      {selected !== null && selected !== 'new' && <ModelDetail key={selected} modelId={selected} onSaved={() => void reload()} />}
    </main>
  );
}

function ModelDetail({ modelId, onSaved }: { modelId: string; onSaved: () => void }) {
  const [model, setModel] = useState<DeviceModelWithCount | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [version, setVersion] = useState(0);
  useEffect(() => {
    const controller = new AbortController();
    getModel(modelId, controller.signal)
      .then(setModel)
      .catch((caught: unknown) => {
        if (!(caught instanceof DOMException)) setError(messageOf(caught, 'Loading the model failed.'));
      });
    return () => controller.abort();
  }, [modelId, version]);
  if (error !== null) {
    return (
      <div role="alert" className="alert alert--error">
        {error}
      </div>
    );
  }
  if (model === null) return <p className="hint">Loading model…</p>;
  return (
    <>
      <ModelEditor
        key={`${model.model_id}-${model.updated_at}`}
        model={model}
        onSaved={() => {
          setVersion((count) => count + 1);
          onSaved();
        }}
      />
      <ModelDevices modelId={model.model_id} count={model.device_count} onChanged={() => setVersion((count) => count + 1)} />
    </>
  );
}

function ModelEditor({ model, onSaved }: { model: DeviceModelWithCount | null; onSaved: (modelId: string) => void }) {
  const id = useId();
  const canEdit = useCan('manage_models');
  const [modelId, setModelId] = useState(model?.model_id ?? '');
  const [desiredText, setDesiredText] = useState(model ? pretty(model.desired_schema) : STARTER_SCHEMA);
  const [reportedText, setReportedText] = useState(model ? pretty(model.reported_schema) : '');
  const [saving, setSaving] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [breaking, setBreaking] = useState<{ message: string; count: number; devices: BreakingDevice[] } | null>(null);
  const [saved, setSaved] = useState(false);

  const desired = parseSchema(desiredText, 'The desired schema', false);
  const reported = parseSchema(reportedText, 'The reported schema', true);
  const idProblem = model === null && !MODEL_ID_RE.test(modelId) ? 'A model id is 1 to 128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit.' : null;
  const problem = idProblem ?? (desired.ok ? (reported.ok ? null : reported.reason) : desired.reason);

  const save = async () => {
    if (problem !== null || !desired.ok || !reported.ok || desired.value === null) return;
    setSaving(true);
    setError(null);
    setBreaking(null);
    setSaved(false);
    try {
      const schemas = { desired_schema: desired.value, reported_schema: reported.value };
      const result = model === null ? await createModel(modelId, schemas) : await replaceModel(model.model_id, schemas);
      setSaved(true);
      onSaved(result.model_id);
    } catch (caught) {
      const refused = caught instanceof ApiError && caught.status === 409 ? breakingDevices(caught.detail) : null;
      if (refused) setBreaking(refused);
      else setError(messageOf(caught, 'Saving the model failed.'));
    } finally {
      setSaving(false);
    }
  };

  return (
    <section className="model-editor" aria-label={model ? `Model ${model.model_id}` : 'New model'}>
      <h2>{model ? <>Model <code>{model.model_id}</code></> : 'New model'}</h2>
      {model && <p className="hint">{model.device_count} device(s) use this model.</p>}
      <form
        onSubmit={(event) => {
          event.preventDefault();
          void save();
        }}
      >
        {model === null && (
          <div className="field">
            <label htmlFor={`${id}-id`}>Model id</label>
            <input id={`${id}-id`} value={modelId} onChange={(event) => setModelId(event.target.value)} placeholder="thermostat-v2" />
          </div>
        )}
        <div className="field">
          <label htmlFor={`${id}-desired`}>Desired schema (JSON Schema)</label>
          <textarea
            id={`${id}-desired`}
            rows={10}
            spellCheck={false}
            value={desiredText}
            readOnly={!canEdit.allowed}
            aria-invalid={!desired.ok}
            onChange={(event) => setDesiredText(event.target.value)}
          />
        </div>
        <div className="field">
          <label htmlFor={`${id}-reported`}>Reported schema (optional)</label>
          <textarea
            id={`${id}-reported`}
            rows={6}
            spellCheck={false}
            value={reportedText}
            readOnly={!canEdit.allowed}
            aria-invalid={!reported.ok}
            onChange={(event) => setReportedText(event.target.value)}
          />
        </div>
        <div className="editor-actions">
          <button
            type="submit"
            className="primary"
            disabled={!canEdit.allowed || saving || problem !== null}
            title={canEdit.reason || undefined}
          >
            {saving ? 'Saving…' : model ? 'Save schema' : 'Create model'}
          </button>
          <p className={problem ? 'field-error' : 'hint'} aria-live="polite">
            {problem ?? (model ? 'A change that breaks a device\'s current desired state is refused, naming the devices.' : 'Ready to create.')}
          </p>
        </div>
      </form>
      {error !== null && (
        <div role="alert" className="alert alert--error">
          {error}
        </div>
      )}
      {saved && <p role="status" className="alert alert--success">Saved.</p>}
      {breaking !== null && (
        <div role="alert" className="alert alert--warning breaking-devices">
          <p>
            <strong>Not saved:</strong> {breaking.count} device(s) have desired state that breaks the new schema. Change their
            desired state first, or relax the schema.
          </p>
          <ul aria-label="Devices that break the schema">
            {breaking.devices.map((device) => (
              <li key={device.device_id}>
                <Link to={devicePath(device.device_id)}>{device.device_id}</Link>:{' '}
                {device.errors.map((item) => `${item.pointer || '(whole document)'} ${item.message}`).join('; ')}
              </li>
            ))}
          </ul>
        </div>
      )}
    </section>
  );
}

function ModelDevices({ modelId, count, onChanged }: { modelId: string; count: number; onChanged: () => void }) {
  const id = useId();
  const canAssign = useCan('manage_devices');
  const [devices, setDevices] = useState<DeviceSummary[] | null>(null);
  const [idsText, setIdsText] = useState('');
  const [results, setResults] = useState<{ device_id: string; ok: boolean; message: string }[]>([]);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    const controller = new AbortController();
    listDevices({ model_id: modelId, limit: 100 }, controller.signal)
      .then((page) => setDevices(page.items))
      .catch(() => setDevices([]));
    return () => controller.abort();
  }, [modelId, count]);

  const assign = async () => {
    const ids = idsText.split(/[\s,]+/).filter(Boolean);
    if (ids.length === 0) return;
    setBusy(true);
    const done: { device_id: string; ok: boolean; message: string }[] = [];
    for (const deviceId of ids) {
      try {
        await updateDevice(deviceId, { model_id: modelId });
        done.push({ device_id: deviceId, ok: true, message: 'assigned' });
      } catch (caught) {
        done.push({ device_id: deviceId, ok: false, message: messageOf(caught, 'refused') });
      }
    }
    setResults(done);
    setBusy(false);
    setIdsText(done.filter((result) => !result.ok).map((result) => result.device_id).join(' '));
    onChanged();
  };

  return (
    <section className="model-devices" aria-label={`Devices of model ${modelId}`}>
      <h3>Devices of this model</h3>
      {devices === null ? (
        <p className="hint">Loading…</p>
      ) : devices.length === 0 ? (
        <p className="hint">No device uses this model yet.</p>
      ) : (
        <ul className="model-device-list">
          {devices.map((device) => (
            <li key={device.device_id}>
              <Link to={devicePath(device.device_id)}>{device.device_id}</Link>
            </li>
          ))}
        </ul>
      )}
      {canAssign.allowed ? (
        <form
          className="assign-form"
          onSubmit={(event) => {
            event.preventDefault();
            void assign();
          }}
        >
          <label htmlFor={`${id}-assign`}>Assign to devices (ids, separated by spaces or commas)</label>
          <input id={`${id}-assign`} value={idsText} onChange={(event) => setIdsText(event.target.value)} placeholder="pump-1 pump-2" />
          <button type="submit" disabled={busy || idsText.trim() === ''}>
            {busy ? 'Assigning…' : 'Assign model'}
          </button>
        </form>
      ) : (
        <p className="hint">{canAssign.reason} Only an admin assigns models.</p>
      )}
      {results.length > 0 && (
        <ul className="assign-results" aria-label="Assignment results">
          {results.map((result) => (
            <li key={result.device_id} className={result.ok ? 'ok' : 'field-error'}>
              {result.device_id}: {result.message}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
