import { Component, type ErrorInfo, type ReactNode } from 'react';

interface State {
  error: Error | null;
}

/** A rendering bug shows a message and a way out, never a blank page. */
export class ErrorBoundary extends Component<{ children: ReactNode }, State> {
  override state: State = { error: null };

  static getDerivedStateFromError(error: Error): State {
    return { error };
  }

  override componentDidCatch(error: Error, info: ErrorInfo): void {
    console.error('Console crashed while rendering', error, info.componentStack);
  }

  override render() {
    if (this.state.error) {
      return (
        <main className="page">
          <div role="alert" className="alert alert--error">
            <p>
              <strong>Something went wrong in the console.</strong> {this.state.error.message}
            </p>
            <p>
              <a href="/">Back to the fleet</a>
            </p>
          </div>
        </main>
      );
    }
    return this.props.children;
  }
}
