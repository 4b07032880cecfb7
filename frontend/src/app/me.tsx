/**
 * Who is signed in (GET /auth/me), for the header and for the controls a role may not use:
 * those are disabled with a tooltip that says which role they need, instead of ending in a 403.
 */
import { createContext, useContext, useEffect, useState, type ReactNode } from 'react';
import { getMe, NEEDED_ROLE, type Me, type Permissions } from '../services/api/me';

/** Who is signed in; `undefined` while it is being asked, `null` when it cannot be known. */
export type MeState = Me | null | undefined;

// Outside a provider (component tests): unknown, so every control is enabled.
const MeContext = createContext<MeState>(null);

export function MeProvider({ me, children }: { me: MeState; children: ReactNode }) {
  return <MeContext.Provider value={me}>{children}</MeContext.Provider>;
}

export function useMe(): Me | null {
  return useContext(MeContext) ?? null;
}

const isMe = (value: unknown): value is Me =>
  !!value &&
  typeof value === 'object' &&
  typeof (value as Me).email === 'string' &&
  typeof (value as Me).role === 'string' &&
  !!(value as Me).permissions &&
  typeof (value as Me).permissions === 'object';

/** Ask who is signed in whenever the sign-in state changes. */
export function useMeLoader(signedIn: boolean): MeState {
  const [me, setMe] = useState<MeState>(undefined);
  useEffect(() => {
    if (!signedIn) {
      setMe(undefined);
      return undefined;
    }
    const controller = new AbortController();
    setMe(undefined);
    getMe(controller.signal)
      .then((answer) => setMe(isMe(answer) ? answer : null))
      .catch((error: unknown) => {
        // Unknown (an older server): controls stay enabled and the server decides.
        if (!(error instanceof DOMException && error.name === 'AbortError')) setMe(null);
      });
    return () => controller.abort();
  }, [signedIn]);
  return me;
}

export interface Allowance {
  allowed: boolean;
  /** Why not, for a tooltip; empty when allowed. */
  reason: string;
}

/** Whether the signed-in role may do this: not yet while the role is being asked (no
 * control flashes enabled), yes when the role cannot be known (the server still decides). */
export function useCan(permission: keyof Permissions): Allowance {
  const state = useContext(MeContext);
  if (state === undefined) return { allowed: false, reason: 'Checking your role…' };
  const me = state;
  if (me === null || me.permissions[permission] !== false) return { allowed: true, reason: '' };
  return {
    allowed: false,
    reason: `Needs the ${NEEDED_ROLE[permission]} role; you are signed in as ${me.role}.`,
  };
}
