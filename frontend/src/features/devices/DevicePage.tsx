import { useState } from 'react';
import { Link, navigate } from '../../app/router';
import { ApiError, deleteDevice } from '../../services/api/devices';
import { DevicePresence } from './DevicePresence';
import { DeviceProfileCard } from './DeviceProfileCard';
import { ShadowTabs } from './ShadowTabs';

export function DevicePage({ deviceId }: { deviceId: string }) {
  const [confirming, setConfirming] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [error, setError] = useState<string | null>(null);

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
            <button type="button" className="danger-outline" onClick={() => setConfirming(true)}>
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
      <ShadowTabs key={`shadows-${deviceId}`} deviceId={deviceId} />
    </main>
  );
}
