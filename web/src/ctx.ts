// What every page knows: the session, the namespaces, the chosen one and the permissions there.
import { createContext } from 'preact';
import { useContext } from 'preact/hooks';
import type { Permissions, Session } from './api';

/** `?namespace=*` shows every namespace (the all-namespaces routes). */
export const ALL = '*';

export interface Ctx {
  session: Session;
  namespaces: string[];
  /** The chosen namespace, or ALL. */
  ns: string;
  perms: Permissions;
}

export const AppCtx = createContext<Ctx>(null as unknown as Ctx);
export const useApp = () => useContext(AppCtx);
