// Sign in with a Kubernetes bearer token (`kubectl create token …`): POSTed once, kept by the
// browser as an HttpOnly cookie; never in a URL.
import { useState } from 'preact/hooks';
import { call, type ApiError, type Session } from './api';
import { Alert } from './ui';

export function SignIn({ onSignedIn }: { onSignedIn: (s: Session) => void }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const r = await call('POST', '/api/v1/session', { token: token.trim() }, { quiet401: true });
      setToken('');
      onSignedIn((await r.json()) as Session);
    } catch (err) {
      setError((err as ApiError).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <main class="signin">
      <form class="card" onSubmit={submit} method="post" action="/signin">
        <h1>devset</h1>
        <p class="muted">Sign in with a Kubernetes token, for example from <code>kubectl create token NAME</code>.</p>
        <label for="token">Token</label>
        <input
          id="token"
          name="token"
          type="password"
          autoComplete="off"
          spellcheck={false}
          required
          autoFocus
          value={token}
          onInput={(e) => setToken(e.currentTarget.value)}
        />
        <Alert error={error} />
        <button type="submit" class="primary" disabled={busy || !token.trim()}>
          Sign in
        </button>
      </form>
    </main>
  );
}
