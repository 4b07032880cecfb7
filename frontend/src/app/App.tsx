import { useEffect } from 'react';
import { clearToken } from '../services/api/devices';
import { SignInPage } from '../features/auth/SignInPage';
import { DevicePage } from '../features/devices/DevicePage';
import { FleetPage } from '../features/devices/FleetPage';
import { ModelsPage } from '../features/models/ModelsPage';
import { useSignedIn } from './auth';
import { WhoAmI } from '../features/auth/WhoAmI';
import { MeProvider, useMeLoader } from './me';
import { ErrorBoundary } from './ErrorBoundary';
import { Link, matchRoute, navigate, useLocation } from './router';
import './operator.css';

/** Where to go after signing in: the `next` of /signin?next=..., if it is one of ours. */
function nextPath(search: string): string {
  const next = new URLSearchParams(search).get('next');
  return next && next.startsWith('/') && !next.startsWith('//') && !next.startsWith('/signin') ? next : '/';
}

export function App() {
  const signedIn = useSignedIn();
  const me = useMeLoader(signedIn);
  const { pathname, search } = useLocation();
  const route = matchRoute(pathname);

  useEffect(() => {
    // Without a token (never signed in, signed out, or a 401) every page becomes the sign-in page.
    if (!signedIn && route.name !== 'signin') {
      navigate(`/signin?next=${encodeURIComponent(pathname + search)}`, { replace: true });
    } else if (signedIn && route.name === 'signin') {
      navigate(nextPath(search), { replace: true });
    }
  }, [signedIn, route.name, pathname, search]);

  if (!signedIn || route.name === 'signin') {
    return <SignInPage onSignedIn={() => navigate(nextPath(search), { replace: true })} />;
  }

  return (
    <MeProvider me={me}>
      <header className="app-header">
        <Link to="/" className="brand">
          IoT Cloud <span className="brand-sub">device twins</span>
        </Link>
        <nav aria-label="Main">
          <Link to="/">Fleet</Link> <Link to="/models">Models</Link>
        </nav>
        <WhoAmI me={me} />
        <button type="button" className="signout" onClick={() => clearToken()}>
          Sign out
        </button>
      </header>
      <ErrorBoundary key={pathname}>
        {route.name === 'fleet' && <FleetPage />}
        {route.name === 'device' && <DevicePage deviceId={route.deviceId} />}
        {route.name === 'models' && <ModelsPage />}
        {route.name === 'not-found' && (
          <main className="page">
            <h1>Page not found</h1>
            <p>
              <Link to="/">Go to the fleet</Link>
            </p>
          </main>
        )}
      </ErrorBoundary>
    </MeProvider>
  );
}
