import { useCallback, useEffect, useState } from 'react';
import { Link, navigate } from '../../app/router';
import { useCan } from '../../app/me';
import { ApiError, deleteDevice, getDevice } from '../../services/api/devices';
import { DevicePresence } from './DevicePresence';
import { DeviceProfileCard } from './DeviceProfileCard';
import { ShadowTabs } from './ShadowTabs';

export function DevicePage({ deviceId }: { deviceId: string }) {
  const [confirming, setConfirming] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const canDelete = useCan('manage_devices');
  // An unknown id (or another tenant's): say so once, and neither poll nor offer actions.
  const [missing, setMissing] = useState(false);
  // Also when it is deleted while the page is open (the twin's next read is a 404).
  const markMissing = useCallback(() => setMissing(true), []);
  useEffect(() => {
    const controller = new AbortController();
    setMissing(false);
    getDevice(deviceId, controller.signal)
      .then(() => undefined)
      .catch((caught: unknown) => {
        if (caught instanceof ApiError && caught.status === 404) setMissing(true);
      });
    return () => controller.abort();
  }, [deviceId]);

  const remove = async () => {
    setDeleting(true);
    setError(null);
    try {
      await deleteDevice(deviceId);
      navigate('/');
    } catch (caught) {
      setError(caught instanceof ApiError ? caught.message : 'Deleting the device failed.');
      setDeleting(false);
      setConfirming(false);
    }
  };

  if (missing) {
    return (
      <main className="page">
        <nav aria-label="Breadcrumb" className="breadcrumb">
          <Link to="/">← Fleet</Link>
        </nav>
        <h1>
          Device <code>{deviceId}</code>
        </h1>
        <div role="alert" className="alert alert--error device-missing">
          No device <code>{deviceId}</code> in your tenant: it was never created, it was deleted, or it belongs to
          another tenant.
        </div>
        <p>
          <Link to="/">Back to the fleet</Link>
        </p>
      </main>
    );
  }

  return (
    <main className="page">
      <nav aria-label="Breadcrumb" className="breadcrumb">
        <Link to="/">← Fleet</Link>
      </nav>
      <div className="page-heading">
        <h1>
          Device <code>{deviceId}</code> <DevicePresence deviceId={deviceId} />
        </h1>
        <div className="page-actions">
          {confirming ? (
            <>
              <span>Delete this device? Its token stops working at once.</span>
              <button type="button" className="danger" disabled={deleting} onClick={() => void remove()}>
                {deleting ? 'Deleting…' : 'Yes, delete'}
              </button>
              <button type="button" onClick={() => setConfirming(false)}>
                Cancel
              </button>
            </>
          ) : (
            <button
              type="button"
              className="danger-outline"
              onClick={() => setConfirming(true)}
              disabled={!canDelete.allowed}
              title={canDelete.reason || undefined}
            >
              Delete device
            </button>
          )}
        </div>
      </div>
      {error !== null && (
        <div role="alert" className="alert alert--error">
          {error}
        </div>
      )}
      <DeviceProfileCard key={`profile-${deviceId}`} deviceId={deviceId} />
      <ShadowTabs key={`shadows-${deviceId}`} deviceId={deviceId} onMissing={markMissing} />
    </main>
  );
}
