/** Administration (SPEC §10): the tenant's users and its audit log, for admins. */
import { request, storeToken } from './client';

export type Role = 'viewer' | 'operator' | 'admin';
export const ROLES: Role[] = ['viewer', 'operator', 'admin'];

export interface User {
  user_id: number;
  email: string;
  role: Role;
  disabled: boolean;
  created_at: string;
  last_login_at: string | null;
}

export interface AuditEntry {
  id: number;
  at: string;
  actor: string;
  action: string;
  target: string;
  detail: Record<string, unknown>;
  ip: string | null;
}

export interface AuditPage {
  items: AuditEntry[];
  next: string | null;
}

export async function listUsers(signal?: AbortSignal): Promise<User[]> {
  const { body } = await request<{ items: User[] }>('/customer/users', { signal });
  return body.items;
}

export async function createUser(input: { email: string; password: string; role: Role }): Promise<User> {
  const { body } = await request<User>('/customer/users', { method: 'POST', json: input });
  return body;
}

export async function updateUser(userId: number, change: { role?: Role; disabled?: boolean }): Promise<User> {
  const { body } = await request<User>(`/customer/users/${userId}`, { method: 'PATCH', json: change });
  return body;
}

export async function deleteUser(userId: number): Promise<void> {
  await request<null>(`/customer/users/${userId}`, { method: 'DELETE' });
}

export async function listAudit(
  params: { cursor?: string | null; actor?: string; action?: string; limit?: number } = {},
  signal?: AbortSignal,
): Promise<AuditPage> {
  const { body } = await request<AuditPage>('/customer/audit', {
    query: { limit: params.limit ?? 50, cursor: params.cursor, actor: params.actor, action: params.action },
    signal,
  });
  return body;
}

/** Change your own password; every other session and token of yours ends. */
export async function changePassword(currentPassword: string, newPassword: string): Promise<void> {
  await request<null>('/auth/password', {
    method: 'POST',
    json: { current_password: currentPassword, new_password: newPassword },
  });
  // The session continues on a new cookie, with a new CSRF token in the readable cookie.
  const csrf = /(?:^|;\s*)iotcloud_csrf=([^;]+)/.exec(document.cookie)?.[1];
  if (csrf) storeToken(decodeURIComponent(csrf), null);
}
