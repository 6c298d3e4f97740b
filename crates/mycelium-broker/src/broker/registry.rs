//! The topic registry: topics created or changed at run time (the HTTP API), kept in
//! `<data_dir>/topics.json` so they come back after a restart or a crash. The broker keeps each
//! topic's settings as the door that made it gave them (JSON); the door turns them back into a
//! spec at start-up. Topics the configuration file names are defined by the file: a registry
//! entry for one of them is ignored at start-up, with a warning.

use std::collections::BTreeMap;

use super::Broker;

/// What `topics.json` holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct RegistryFile {
    /// Format version (1).
    version: u32,
    /// Topic name -> its settings as given.
    topics: BTreeMap<String, serde_json::Value>,
}

impl Broker {
    /// The topics kept in the registry, as `(name, settings)`, sorted by name. Blocking.
    ///
    /// # Errors
    /// The file cannot be read, or is not a registry (its path and the reason).
    pub fn registered_topics(&self) -> Result<Vec<(String, serde_json::Value)>, String> {
        let path = self.data_dir().topic_registry();
        let mut registry = self.topic_registry.lock();
        let file = match crate::store::io::read_state(&path) {
            Ok(bytes) => match serde_json::from_slice::<RegistryFile>(&bytes) {
                Ok(file) => file,
                Err(error) => {
                    // Kept aside for the operator, so the next change does not write over it.
                    let kept = crate::store::io::set_aside(&path);
                    return Err(format!(
                        "{}: not a topic registry ({error}); moved to {:?}, its topics are not restored",
                        path.display(),
                        kept.map(|p| p.display().to_string())
                    ));
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => RegistryFile::default(),
            Err(error) => return Err(format!("{}: {error}", path.display())),
        };
        *registry = file.topics;
        Ok(registry.iter().map(|(n, s)| (n.clone(), s.clone())).collect())
    }

    /// Keeps `name` with `settings` in the registry (replacing what it had), durably. Blocking.
    ///
    /// # Errors
    /// The write failed; the registry on disk is then unchanged.
    pub fn register_topic(&self, name: &str, settings: serde_json::Value) -> std::io::Result<()> {
        self.change_registry(|topics| {
            topics.insert(name.to_owned(), settings);
        })
    }

    /// Drops `name` from the registry, durably. Blocking.
    ///
    /// # Errors
    /// The write failed; the registry on disk is then unchanged.
    pub fn unregister_topic(&self, name: &str) -> std::io::Result<()> {
        self.change_registry(|topics| {
            topics.remove(name);
        })
    }

    fn change_registry(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, serde_json::Value>),
    ) -> std::io::Result<()> {
        let mut registry = self.topic_registry.lock();
        let mut topics = registry.clone();
        change(&mut topics);
        let file = RegistryFile { version: 1, topics };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        crate::store::io::write_state(&self.data_dir().topic_registry(), &bytes)?;
        *registry = file.topics;
        Ok(())
    }
}
