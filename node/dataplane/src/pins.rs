//! Opening maps pinned in a node's bpffs directory by name, without a
//! loaded object: the sync loop, the inspection commands and `/metrics`
//! each open their own handles to the maps the agent's object pinned.

use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapError};

use crate::{Error, Result};

/// Opens the map `name` pinned under `dir`; [`Error::NotPinned`] if it is
/// not there (the object was never loaded with this pin directory).
pub(crate) fn open_pinned(dir: &Path, name: &'static str) -> Result<Map> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(Error::NotPinned {
            dir: dir.to_owned(),
            name,
        });
    }
    let data = MapData::from_pin(&path).map_err(|source| Error::OpenPinned {
        path: PathBuf::from(&path),
        source,
    })?;
    Map::from_map_data(data).map_err(map_err("opening", name))
}

/// Wraps a map error with what was being done to which map.
pub(crate) fn map_err(what: &'static str, name: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map { what, name, source }
}
