// A small history router: the page's routes are /signin, /runs, /runs/{ns}/{name}, /schedules,
// with the namespace in `?namespace=`.
import { useEffect, useState } from 'preact/hooks';

const listeners = new Set<() => void>();

export function navigate(to: string, replace = false) {
  if (to === location.pathname + location.search) return;
  if (replace) history.replaceState(null, '', to);
  else history.pushState(null, '', to);
  listeners.forEach((f) => f());
  window.scrollTo(0, 0);
}

addEventListener('popstate', () => listeners.forEach((f) => f()));

export function useLocation() {
  const [, setTick] = useState(0);
  useEffect(() => {
    const f = () => setTick((t) => t + 1);
    listeners.add(f);
    return () => void listeners.delete(f);
  }, []);
  return { path: location.pathname, query: new URLSearchParams(location.search) };
}

/** A link the router follows without reloading the page (a plain click; others open as usual). */
export function onLinkClick(e: MouseEvent) {
  const a = (e.currentTarget as HTMLAnchorElement) ?? null;
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute('href') ?? '/runs');
}

/** `path?namespace=ns` (the namespace picker's choice travels in the query). */
export const withNs = (path: string, ns: string) =>
  ns ? `${path}?namespace=${encodeURIComponent(ns)}` : path;
