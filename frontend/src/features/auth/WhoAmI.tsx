import type { Me } from '../../services/api/me';

/** The header's "who is signed in": e-mail, tenant and role. */
export function WhoAmI({ me }: { me: Me | null | undefined }) {
  if (!me) return null;
  return (
    <div className="whoami" aria-label="Signed in as">
      <span className="whoami-email" title={me.email}>
        {me.email}
      </span>
      <span className="whoami-tenant" title={`Tenant ${me.tenant_id}`}>
        {me.tenant_name}
      </span>
      <span className={`role-badge role-badge--${me.role}`} title={roleHelp(me.role)}>
        {me.role}
      </span>
    </div>
  );
}

function roleHelp(role: Me['role']): string {
  if (role === 'viewer') return 'Viewer: reads everything, changes nothing.';
  if (role === 'operator') return 'Operator: reads, and writes desired state (one device or a bulk job).';
  return 'Admin: also adds and deletes devices, edits models and manages users.';
}
