//! Watching one namespace, several, or all: the controller and the API take a namespace list
//! (`--namespace a,b`). A reflector store holds one list-watch, so several namespaces mean
//! several stores, read here as one.

use kube::{
    Api, Client, Resource,
    runtime::reflector::{ObjectRef, Store},
};
use std::sync::Arc;

/// One `Api` per namespace in `namespaces`, or one over all namespaces when it is empty.
pub fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

/// Whether `ns` is one of `namespaces` (an empty list is every namespace).
pub fn serves(namespaces: &[String], ns: &str) -> bool {
    namespaces.is_empty() || namespaces.iter().any(|n| n == ns)
}

/// Reflector stores of disjoint namespaces, read as one.
pub struct Stores<K: Resource<DynamicType = ()> + Clone + 'static>(pub Vec<Store<K>>);

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Stores<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> std::fmt::Debug for Stores<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stores({} stores)", self.0.len())
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Stores<K> {
    /// Every object of every store.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.0.iter().flat_map(|s| s.state()).collect()
    }

    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.0.iter().find_map(|s| s.get(key))
    }

    /// Whether every store has listed once.
    pub fn is_ready(&self) -> bool {
        use futures::FutureExt;
        self.0.iter().all(|s| {
            s.wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
        })
    }
}
