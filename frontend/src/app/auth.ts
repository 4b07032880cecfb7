import { useSyncExternalStore } from 'react';
import { getToken, subscribeToAuth } from '../services/api/devices';

/** True while a usable token is stored; flips on sign-in, sign-out and any 401. */
export function useSignedIn(): boolean {
  return useSyncExternalStore(subscribeToAuth, () => getToken() !== null);
}
