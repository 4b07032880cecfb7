import { request } from './client';

export type Role = 'viewer' | 'operator' | 'admin';

export interface Permissions {
  write_desired: boolean;
  run_bulk_jobs: boolean;
  manage_devices: boolean;
  manage_models: boolean;
  manage_users: boolean;
}

/** GET /auth/me: who the token is, in which tenant, and what the role may do. */
export interface Me {
  user_id: number;
  email: string;
  tenant_id: string;
  tenant_name: string;
  role: Role;
  permissions: Permissions;
}

export async function getMe(signal?: AbortSignal): Promise<Me> {
  const { body } = await request<Me>('/auth/me', { signal });
  return body;
}

/** The least role each permission needs (SPEC §5), for the tooltip of a control it disables. */
export const NEEDED_ROLE: Record<keyof Permissions, Role> = {
  write_desired: 'operator',
  run_bulk_jobs: 'operator',
  manage_devices: 'admin',
  manage_models: 'admin',
  manage_users: 'admin',
};
