import { useCallback, useEffect, useState, type FormEvent } from 'react';
import {
  ApiError,
  getDevice,
  listModels,
  schemaErrorDetail,
  updateDevice,
  type DeviceModel,
  type DeviceProfile,
  type DeviceProfilePatch,
  type SchemaErrorDetail,
} from '../../services/api/devices';
import { SchemaErrors } from './SchemaErrors';
import { useCan } from '../../app/me';

/** Tag keys the server accepts (no ':', so `tag=key:value` filters split unambiguously). */
export const TAG_KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$/;

const messageOf = (error: unknown, fallback: string): string =>
  error instanceof ApiError ? error.message : error instanceof Error ? error.message : fallback;

/** The device's name, model and tags, editable through PATCH /customer/devices/{id}. */
export function DeviceProfileCard({ deviceId }: { deviceId: string }) {
  const [profile, setProfile] = useState<DeviceProfile | null>(null);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [models, setModels] = useState<DeviceModel[] | null>(null);
  const [modelsError, setModelsError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [schemaError, setSchemaError] = useState<SchemaErrorDetail | null>(null);
  const [tagKey, setTagKey] = useState('');
  const canEdit = useCan('manage_devices');
  const [tagValue, setTagValue] = useState('');

  useEffect(() => {
    const controller = new AbortController();
    getDevice(deviceId, controller.signal)
      .then((loaded) => {
        setProfile(loaded);
        setLoadError(null);
      })
      .catch((caught: unknown) => {
        if (!controller.signal.aborted) setLoadError(caught);
      });
    listModels(controller.signal)
      .then((page) => setModels(page.items))
      .catch((caught: unknown) => {
        if (!controller.signal.aborted) setModelsError(messageOf(caught, 'Could not load the device models.'));
      });
    return () => controller.abort();
  }, [deviceId]);

  const apply = useCallback(
    async (patch: DeviceProfilePatch): Promise<boolean> => {
      setBusy(true);
      setError(null);
      setSchemaError(null);
      try {
        setProfile(await updateDevice(deviceId, patch));
        return true;
      } catch (caught) {
        const schema = schemaErrorDetail(caught);
        if (schema) setSchemaError(schema);
        else setError(messageOf(caught, 'Updating the device failed.'));
        return false;
      } finally {
        setBusy(false);
      }
    },
    [deviceId],
  );

  if (profile === null) {
    // A missing device is explained once, by the twin panel below.
    if (loadError instanceof ApiError && loadError.status === 404) return null;
    return (
      <section className="profile-card" aria-label="Device profile">
        {loadError !== null ? (
          <div role="alert" className="alert alert--error">
            Could not load the device's name, model and tags: {messageOf(loadError, 'unknown error')}
          </div>
        ) : (
          <p className="hint">Loading device…</p>
        )}
      </section>
    );
  }

  const tags = Object.entries(profile.tags ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const keyProblem =
    tagKey === ''
      ? null
      : !TAG_KEY_RE.test(tagKey)
        ? 'Tag keys start with a letter or digit and use only letters, digits and . _ / - (no ":").'
        : null;
  const canAdd = tagKey !== '' && keyProblem === null && !busy;

  const addTag = async (event: FormEvent) => {
    event.preventDefault();
    if (!canAdd) return;
    if (await apply({ tags: { [tagKey]: tagValue } })) {
      setTagKey('');
      setTagValue('');
    }
  };

  const modelOptions = models ?? [];
  const currentModelMissing = profile.model_id !== null && !modelOptions.some((model) => model.model_id === profile.model_id);

  return (
    <section className="profile-card" aria-label="Device profile">
      <dl className="profile-facts">
        <div>
          <dt>Name</dt>
          <dd>{profile.name || <span className="muted">unnamed</span>}</dd>
        </div>
        <div>
          <dt>
            <label htmlFor={`model-${deviceId}`}>Model</label>
          </dt>
          <dd>
            <select
              id={`model-${deviceId}`}
              value={profile.model_id ?? ''}
              disabled={busy || models === null || !canEdit.allowed}
              title={canEdit.reason || undefined}
              onChange={(event) => void apply({ model_id: event.target.value === '' ? null : event.target.value })}
            >
              <option value="">(no model)</option>
              {currentModelMissing && <option value={profile.model_id ?? ''}>{profile.model_id}</option>}
              {modelOptions.map((model) => (
                <option key={model.model_id} value={model.model_id}>
                  {model.model_id}
                </option>
              ))}
            </select>
            {modelsError !== null && <span className="field-error"> {modelsError}</span>}
            {models !== null && models.length === 0 && <span className="hint"> No models defined yet.</span>}
          </dd>
        </div>
        <div className="profile-tags">
          <dt>Tags</dt>
          <dd>
            {tags.length === 0 ? (
              <span className="muted">no tags</span>
            ) : (
              <ul className="tag-list" aria-label="Tags">
                {tags.map(([key, value]) => (
                  <li key={key} className="tag-chip">
                    <code>
                      {key}:{value}
                    </code>
                    {canEdit.allowed && (
                    <button
                      type="button"
                      className="tag-remove"
                      aria-label={`Remove tag ${key}`}
                      title={`Remove tag ${key}`}
                      disabled={busy}
                      onClick={() => void apply({ tags: { [key]: null } })}
                    >
                      ×
                    </button>
                    )}
                  </li>
                ))}
              </ul>
            )}
          </dd>
        </div>
      </dl>
      {!canEdit.allowed ? (
        <p className="hint role-hint">{canEdit.reason} Only an admin changes a device&apos;s model and tags.</p>
      ) : (
      <form className="tag-form" onSubmit={(event) => void addTag(event)} aria-label="Add tag">
        <label>
          Tag key{' '}
          <input value={tagKey} onChange={(event) => setTagKey(event.target.value)} placeholder="site" aria-invalid={keyProblem !== null} size={12} />
        </label>
        <label>
          Tag value{' '}
          <input value={tagValue} onChange={(event) => setTagValue(event.target.value)} placeholder="berlin" maxLength={256} size={14} />
        </label>
        <button type="submit" disabled={!canAdd}>
          Add tag
        </button>
        {keyProblem !== null && <span className="field-error">{keyProblem}</span>}
      </form>
      )}
      {error !== null && (
        <div role="alert" className="alert alert--error">
          {error}
        </div>
      )}
      {schemaError !== null && <SchemaErrors detail={schemaError} title="Model not changed: the current desired state does not match it." />}
    </section>
  );
}
