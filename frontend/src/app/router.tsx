/**
 * A deliberately tiny client-side router: three routes do not need a library.
 * ui_iot serves index.html for unknown paths, so every route survives a reload.
 */
import { useSyncExternalStore, type AnchorHTMLAttributes, type MouseEvent } from 'react';

const listeners = new Set<() => void>();

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  window.addEventListener('popstate', listener);
  return () => {
    listeners.delete(listener);
    window.removeEventListener('popstate', listener);
  };
}

const currentLocation = (): string => window.location.pathname + window.location.search;

export function navigate(to: string, options: { replace?: boolean } = {}): void {
  if (to === currentLocation()) return;
  if (options.replace) window.history.replaceState(null, '', to);
  else window.history.pushState(null, '', to);
  for (const listener of listeners) listener();
}

/** Path plus query string, re-rendering on every navigation. */
export function useLocation(): { pathname: string; search: string } {
  const location = useSyncExternalStore(subscribe, currentLocation);
  const index = location.indexOf('?');
  return index === -1
    ? { pathname: location, search: '' }
    : { pathname: location.slice(0, index), search: location.slice(index) };
}

export type Route = { name: 'fleet' } | { name: 'models' } | { name: 'device'; deviceId: string } | { name: 'signin' } | { name: 'not-found' };

export function matchRoute(pathname: string): Route {
  if (pathname === '/' || pathname === '') return { name: 'fleet' };
  if (pathname === '/signin') return { name: 'signin' };
  if (pathname === '/models') return { name: 'models' };
  const device = /^\/devices\/([^/]+)\/?$/.exec(pathname);
  if (device?.[1]) {
    try {
      return { name: 'device', deviceId: decodeURIComponent(device[1]) };
    } catch {
      return { name: 'not-found' };
    }
  }
  return { name: 'not-found' };
}

export const devicePath = (deviceId: string): string => `/devices/${encodeURIComponent(deviceId)}`;

type LinkProps = Omit<AnchorHTMLAttributes<HTMLAnchorElement>, 'href'> & { to: string };

export function Link({ to, onClick, ...rest }: LinkProps) {
  const handleClick = (event: MouseEvent<HTMLAnchorElement>) => {
    onClick?.(event);
    // Let the browser handle new-tab and modified clicks.
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) {
      return;
    }
    event.preventDefault();
    navigate(to);
  };
  return <a href={to} onClick={handleClick} {...rest} />;
}
