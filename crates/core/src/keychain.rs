//! The seam between "where credentials come from" and "who uses them",
//! after go-containerregistry's `authn.Keychain`: a keychain answers, for one
//! image, the credentials to try, most specific first. A registry client tries
//! them in order and moves on when the registry refuses one.

use crate::credential::Credential;
use crate::reference::Reference;

/// Source of credentials for images.
pub trait Keychain: Send + Sync {
    /// Credentials to try for `image`, in order. Empty means anonymous.
    fn credentials_for(&self, image: &Reference) -> Vec<Credential>;
}

/// Always anonymous.
#[derive(Debug, Default, Clone, Copy)]
pub struct Anonymous;

impl Keychain for Anonymous {
    fn credentials_for(&self, _: &Reference) -> Vec<Credential> {
        Vec::new()
    }
}

/// Several keychains consulted in order; the first that knows the image wins.
pub struct Chain(pub Vec<Box<dyn Keychain>>);

impl Keychain for Chain {
    fn credentials_for(&self, image: &Reference) -> Vec<Credential> {
        self.0
            .iter()
            .map(|k| k.credentials_for(image))
            .find(|c| !c.is_empty())
            .unwrap_or_default()
    }
}

impl<K: Keychain + ?Sized> Keychain for std::sync::Arc<K> {
    fn credentials_for(&self, image: &Reference) -> Vec<Credential> {
        (**self).credentials_for(image)
    }
}
