import { render, screen } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import { OnlineDot, presenceText } from './OnlineDot';
import { absoluteTime } from './relativeTime';

const AT = '2026-05-01T10:00:00+00:00';

describe('OnlineDot', () => {
  it('is green and says since when for a connected device', () => {
    render(<OnlineDot presence={{ connected: true, connected_at: AT, disconnected_at: null }} />);
    const dot = screen.getByRole('img', { name: `online since ${absoluteTime(AT)}` });
    expect(dot).toHaveClass('online-dot--online');
    expect(dot).toHaveAttribute('title', `online since ${absoluteTime(AT)}`);
  });

  it('is grey and says since when for a disconnected device, or that it never connected', () => {
    const { rerender } = render(<OnlineDot presence={{ connected: false, connected_at: AT, disconnected_at: AT }} />);
    const dot = screen.getByRole('img', { name: `offline since ${absoluteTime(AT)}` });
    expect(dot).toHaveClass('online-dot--offline');
    rerender(<OnlineDot presence={{ connected: false, connected_at: null, disconnected_at: null }} />);
    expect(screen.getByRole('img', { name: 'offline (never connected)' })).toHaveClass('online-dot--offline');
  });

  it('announces changes when live', () => {
    render(<OnlineDot presence={{ connected: true, connected_at: null, disconnected_at: null }} live />);
    expect(screen.getByRole('status', { name: 'online' })).toHaveAttribute('aria-live', 'polite');
  });

  it('words presence without a time it does not have', () => {
    expect(presenceText({ connected: true, connected_at: null, disconnected_at: null })).toBe('online');
    expect(presenceText({ connected: false, connected_at: AT, disconnected_at: 'garbage' })).toBe('offline (never connected)');
  });
});
