/**
 * Who is signed in (GET /auth/me), for the header and for the controls a role may not use:
 * those are disabled with a tooltip that says which role they need, instead of ending in a 403.
 */
import { createContext, useContext, useEffect, useState, type ReactNode } from 'react';
import { getMe, NEEDED_ROLE, type Me, type Permissions } from '../services/api/me';

const MeContext = createContext<Me | null>(null);

export function MeProvider({ me, children }: { me: Me | null; children: ReactNode }) {
  return <MeContext.Provider value={me}>{children}</MeContext.Provider>;
}

export function useMe(): Me | null {
  return useContext(MeContext);
}

/** Load who is signed in whenever the sign-in state changes; null while unknown. */
export function useMeLoader(signedIn: boolean): Me | null {
  const [me, setMe] = useState<Me | null>(null);
  useEffect(() => {
    if (!signedIn) {
      setMe(null);
      return undefined;
    }
    const controller = new AbortController();
    getMe(controller.signal)
      .then(setMe)
      .catch(() => setMe(null)); // unknown: controls stay enabled and the server decides
    return () => controller.abort();
  }, [signedIn]);
  return me;
}

export interface Allowance {
  allowed: boolean;
  /** Why not, for a tooltip; empty when allowed. */
  reason: string;
}

/** Whether the signed-in role may do this. Unknown (still loading) counts as allowed. */
export function useCan(permission: keyof Permissions): Allowance {
  const me = useMe();
  if (me === null || me.permissions[permission]) return { allowed: true, reason: '' };
  return {
    allowed: false,
    reason: `Needs the ${NEEDED_ROLE[permission]} role; you are signed in as ${me.role}.`,
  };
}
