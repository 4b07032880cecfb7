/** The rollouts API (SPEC §11): list, read, resume, pause, abort. */
import { request } from '../../services/api/client';

export type RolloutState = 'running' | 'paused' | 'reverting' | 'reverted' | 'done' | 'aborted';
export type RolloutAction = 'pause' | 'resume' | 'abort';

export interface RolloutStage {
  stage: number;
  /** As requested: {percent} or {count}. */
  target: { percent?: number; count?: number };
  devices: number;
  written: number;
  not_written: number;
  synced: number;
  rejected: number;
  unhealthy: number;
  reverted: number;
  status: string;
}

export interface Rollout {
  rollout_id: string;
  state: RolloutState;
  stage: number;
  stages: RolloutStage[];
  matched: number;
  desired: Record<string, unknown>;
  success: { synced_ratio: number; within_s: number; health?: { pointer: string; op: string; value: unknown } };
  on_failure: 'pause' | 'revert';
  reason: string | null;
  created_by: string;
  created_at: string;
  finished_at: string | null;
}

const base = '/customer/fleet/rollouts';

export async function listRollouts(limit = 20, signal?: AbortSignal): Promise<Rollout[]> {
  const { body } = await request<{ items: Rollout[] }>(base, { query: { limit }, signal });
  return body.items;
}

export async function getRollout(rolloutId: string, signal?: AbortSignal): Promise<Rollout> {
  const { body } = await request<Rollout>(`${base}/${encodeURIComponent(rolloutId)}`, { signal });
  return body;
}

export async function actOnRollout(rolloutId: string, action: RolloutAction): Promise<Rollout> {
  const { body } = await request<Rollout>(`${base}/${encodeURIComponent(rolloutId)}/${action}`, { method: 'POST' });
  return body;
}

/** Which buttons a rollout in this state offers. */
export function actionsFor(state: RolloutState): RolloutAction[] {
  switch (state) {
    case 'running':
      return ['pause', 'abort'];
    case 'paused':
      return ['resume', 'abort'];
    case 'reverting':
      return ['abort'];
    default:
      return [];
  }
}

export function targetText(target: RolloutStage['target']): string {
  if (typeof target.count === 'number') return `${target.count} devices`;
  return `${target.percent ?? 0} %`;
}
