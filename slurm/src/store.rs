//! What the prolog and epilog do to a node's checkpoint store, as root, in
//! directories the job's user can write:
//!
//! * every path is walked one name at a time from `/` with `O_NOFOLLOW`,
//!   and everything below is opened relative to its parent's descriptor,
//!   so a symlink (or one swapped in meanwhile) is never followed;
//! * the names taken from the store (job ids in the markers) must pass the
//!   store's own rules (`pm_core::names::validate_job_id`);
//! * what is removed must belong to the job's user;
//! * the caller runs this with the user's file-system ids (`sys::AsUser`).
//!
//! Layout (pmrun under Slurm): a node's store is `<root>/<node>/`; pmrun
//! job `<job>` keeps `<root>/<node>/<job>/` and `<root>/<node>/.pmrun/<job>/`;
//! each pmd of Slurm job `<id>` marks them with the empty file
//! `<root>/<node>/.slurm/<id>/<job>`.

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{CStr, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Deeper than any snapshot tree; a bound on the recursion.
const MAX_DEPTH: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: not an absolute path of plain names (no `.`, `..` or `//`)")]
    NotPlain(PathBuf),
    #[error("{name:?}: not a valid {what} (1-64 of A-Z a-z 0-9 . _ -, not starting with `.`)")]
    BadName { what: &'static str, name: String },
    #[error("{0}: a symlink or not a directory; give the real directory")]
    NotADirectory(PathBuf),
    #[error("{path}: owned by uid {owner}, not by the job's user (uid {uid}); left alone")]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error("{path}: more than {MAX_DEPTH} directories deep; left alone")]
    TooDeep { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The same rules as `pm_core::names::validate_job_id` (the plugin does not
/// link pm-core and its hwloc into srun and slurmd; a test compares them).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn name_ok(what: &'static str, name: &str) -> Result<(), StoreError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(StoreError::BadName {
            what,
            name: name.to_owned(),
        })
    }
}

/// The store roots of a job: pmrun's default for the job's uid, and the
/// one `--pm-store` (or `PM_STORE` at submission) named, if another.
pub fn roots(uid: u32, given: Option<&str>) -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(format!("/dev/shm/pmrun-{uid}"))];
    if let Some(g) = given.map(|g| PathBuf::from(g.trim_end_matches('/')))
        && !roots.contains(&g)
    {
        roots.push(g);
    }
    roots
}

fn io(path: &Path) -> impl FnOnce(Errno) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.to_owned(),
        source: e.into(),
    }
}

const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

/// Opens the directory `name` of `parent`, never through a symlink;
/// `Ok(None)` if it does not exist.
fn open_dir(parent: &OwnedFd, name: &OsStr, path: &Path) -> Result<Option<OwnedFd>, StoreError> {
    match rustix::fs::openat(parent, name, DIR, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(StoreError::NotADirectory(path.to_owned())),
        Err(e) => Err(io(path)(e)),
    }
}

/// The components of a plain absolute path.
fn parts(path: &Path) -> Result<Vec<&OsStr>, StoreError> {
    let text = path.as_os_str().as_bytes();
    let ok = crate::options::plain_absolute(path);
    if !ok || text.contains(&0) {
        return Err(StoreError::NotPlain(path.to_owned()));
    }
    Ok(text[1..]
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .map(OsStr::from_bytes)
        .collect())
}

fn slash() -> Result<OwnedFd, StoreError> {
    rustix::fs::openat(rustix::fs::CWD, "/", DIR, Mode::empty()).map_err(io(Path::new("/")))
}

/// Opens `path` from `/`, one name at a time; `Ok(None)` when a part is missing.
fn open_path(path: &Path) -> Result<Option<OwnedFd>, StoreError> {
    let mut fd = slash()?;
    let mut walked = PathBuf::from("/");
    for part in parts(path)? {
        walked.push(part);
        match open_dir(&fd, part, &walked)? {
            Some(next) => fd = next,
            None => return Ok(None),
        }
    }
    Ok(Some(fd))
}

fn owned_by(fd: &OwnedFd, uid: u32, path: &Path) -> Result<(), StoreError> {
    let st = rustix::fs::fstat(fd).map_err(io(path))?;
    if st.st_uid != uid {
        return Err(StoreError::NotOwned {
            path: path.to_owned(),
            owner: st.st_uid,
            uid,
        });
    }
    Ok(())
}

/// Makes `name` in `parent` (mode 0700) unless it exists, and opens it.
fn make_dir(parent: &OwnedFd, name: &OsStr, path: &Path) -> Result<OwnedFd, StoreError> {
    match rustix::fs::mkdirat(parent, name, Mode::RWXU) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io(path)(e)),
    }
    open_dir(parent, name, path)?.ok_or_else(|| StoreError::NotADirectory(path.to_owned()))
}

/// The prolog's work: `<root>` and `<root>/<node>` exist, are directories
/// of the job's user, mode 0700 (missing parents are made, as pmrun would).
pub fn prepare(root: &Path, node: &str, uid: u32) -> Result<PathBuf, StoreError> {
    name_ok("node name", node)?;
    let mut fd = slash()?;
    let mut walked = PathBuf::from("/");
    for part in parts(root)? {
        walked.push(part);
        fd = make_dir(&fd, part, &walked)?;
    }
    let node_path = root.join(node);
    let node_fd = make_dir(&fd, OsStr::new(node), &node_path)?;
    for (fd, path) in [(&fd, root), (&node_fd, node_path.as_path())] {
        owned_by(fd, uid, path)?;
        rustix::fs::fchmod(fd, Mode::RWXU).map_err(io(path))?;
    }
    Ok(node_path)
}

/// What the epilog removed from one node store.
#[derive(Debug, Default, PartialEq)]
pub struct Cleaned {
    /// The pmrun jobs whose files were removed.
    pub jobs: Vec<String>,
    /// Marks that named no valid job (removed, nothing else touched).
    pub bad_marks: Vec<String>,
}

/// The epilog's work: for each mark `<root>/<node>/.slurm/<slurm_job>/<job>`,
/// removes `<root>/<node>/<job>` and `<root>/<node>/.pmrun/<job>`, then
/// the marks. A missing store or mark directory is nothing to do.
pub fn clean(root: &Path, node: &str, slurm_job: u32, uid: u32) -> Result<Cleaned, StoreError> {
    name_ok("node name", node)?;
    let mut done = Cleaned::default();
    let Some(root_fd) = open_path(root)? else {
        return Ok(done);
    };
    let node_path = root.join(node);
    let Some(node_fd) = open_dir(&root_fd, OsStr::new(node), &node_path)? else {
        return Ok(done);
    };
    owned_by(&node_fd, uid, &node_path)?;
    let slurm_path = node_path.join(".slurm");
    let Some(slurm_fd) = open_dir(&node_fd, OsStr::new(".slurm"), &slurm_path)? else {
        return Ok(done);
    };
    let id = slurm_job.to_string();
    let marks_path = slurm_path.join(&id);
    let Some(marks_fd) = open_dir(&slurm_fd, OsStr::new(&id), &marks_path)? else {
        return Ok(done);
    };
    owned_by(&marks_fd, uid, &marks_path)?;
    let pmrun_path = node_path.join(".pmrun");
    let pmrun_fd = open_dir(&node_fd, OsStr::new(".pmrun"), &pmrun_path)?;
    for mark in entries(&marks_fd, &marks_path)? {
        let name = mark.to_string_lossy().into_owned();
        if valid_name(&name) {
            remove_tree(&node_fd, &mark, &node_path.join(&mark), uid, 0)?;
            if let Some(fd) = &pmrun_fd {
                remove_tree(fd, &mark, &pmrun_path.join(&mark), uid, 0)?;
            }
            done.jobs.push(name);
        } else {
            done.bad_marks.push(name);
        }
        // The mark itself, whatever it is; a directory here is not pmd's.
        remove_tree(&marks_fd, &mark, &marks_path.join(&mark), uid, 0)?;
    }
    drop(marks_fd);
    match rustix::fs::unlinkat(&slurm_fd, id.as_str(), AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(io(&marks_path)(e)),
    }
    Ok(done)
}

/// The names in a directory, without `.` and `..`.
fn entries(fd: &OwnedFd, path: &Path) -> Result<Vec<std::ffi::OsString>, StoreError> {
    let mut dir = rustix::fs::Dir::read_from(fd).map_err(io(path))?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(io(path))?;
        let name: &CStr = entry.file_name();
        if name != c"." && name != c".." {
            names.push(OsStr::from_bytes(name.to_bytes()).to_owned());
        }
    }
    Ok(names)
}

/// Removes `name` in `parent` and, if it is a directory (never a symlink
/// to one), everything in it. The top entry must be the user's; below it,
/// the user's own directory is the user's to empty.
fn remove_tree(
    parent: &OwnedFd,
    name: &OsStr,
    path: &Path,
    uid: u32,
    depth: u32,
) -> Result<(), StoreError> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    if depth == 0 && st.st_uid != uid {
        return Err(StoreError::NotOwned {
            path: path.to_owned(),
            owner: st.st_uid,
            uid,
        });
    }
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io(path)(e)),
        };
    }
    if depth >= MAX_DEPTH {
        return Err(StoreError::TooDeep {
            path: path.to_owned(),
        });
    }
    // Replaced by a symlink since the stat: open_dir refuses it.
    let Some(fd) = open_dir(parent, name, path)? else {
        return Ok(());
    };
    for child in entries(&fd, path)? {
        remove_tree(&fd, &child, &path.join(&child), uid, depth + 1)?;
    }
    drop(fd);
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    fn uid() -> u32 {
        rustix::process::getuid().as_raw()
    }

    /// A node store as pmd leaves it for `jobs` of Slurm job 42.
    fn store(root: &Path, node: &str, jobs: &[&str]) {
        for job in jobs {
            let d = root.join(node).join(job).join("epoch-3/rank-0");
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("data"), b"bytes").unwrap();
            let p = root.join(node).join(".pmrun").join(job);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("secret"), b"s").unwrap();
            let m = root.join(node).join(".slurm/42");
            fs::create_dir_all(&m).unwrap();
            fs::write(m.join(job), b"").unwrap();
        }
    }

    #[test]
    fn the_name_rules_are_the_store_s() {
        for name in [
            "heat-slurm42",
            "a.b_c-d",
            "x",
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "sp ace",
            "a\0b",
            &"a".repeat(64),
            &"a".repeat(65),
        ] {
            assert_eq!(
                valid_name(name),
                pm_core::names::validate_job_id(name).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn the_epilog_removes_the_marked_jobs_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        store(&root, "n1", &["heat-slurm42", "other"]);
        // Another Slurm job's pmrun job on the same node, and a stray dir.
        fs::create_dir_all(root.join("n1/kept/epoch-1")).unwrap();
        fs::create_dir_all(root.join("n1/.slurm/43")).unwrap();
        fs::write(root.join("n1/.slurm/43/kept"), b"").unwrap();
        let done = clean(&root, "n1", 42, uid()).unwrap();
        assert_eq!(done.jobs.len(), 2);
        assert!(done.bad_marks.is_empty());
        for gone in [
            "n1/heat-slurm42",
            "n1/other",
            "n1/.pmrun/heat-slurm42",
            "n1/.slurm/42",
        ] {
            assert!(!root.join(gone).exists(), "{gone}");
        }
        for kept in ["n1/kept/epoch-1", "n1/.slurm/43/kept", "n1/.pmrun"] {
            assert!(root.join(kept).exists(), "{kept}");
        }
        // Again: nothing left to do, and no store at all is fine too.
        assert_eq!(clean(&root, "n1", 42, uid()).unwrap(), Cleaned::default());
        assert_eq!(
            clean(&t.path().join("none"), "n1", 42, uid()).unwrap(),
            Cleaned::default()
        );
    }

    #[test]
    fn the_epilog_never_follows_a_symlink_and_skips_bad_marks() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::create_dir_all(victim.join("sub")).unwrap();
        fs::write(victim.join("sub/precious"), b"keep").unwrap();
        let root = t.path().join("store");
        store(&root, "n1", &["job"]);
        // The job dir holds a symlink to the victim; a mark names `..`-ish
        // and a symlinked job; .pmrun/job is a symlink too.
        symlink(&victim, root.join("n1/job/link")).unwrap();
        symlink(&victim, root.join("n1/linked")).unwrap();
        fs::write(root.join("n1/.slurm/42/linked"), b"").unwrap();
        fs::write(root.join("n1/.slurm/42/.hidden"), b"").unwrap();
        fs::remove_dir_all(root.join("n1/.pmrun/job")).unwrap();
        symlink(&victim, root.join("n1/.pmrun/job")).unwrap();
        let done = clean(&root, "n1", 42, uid()).unwrap();
        assert_eq!(done.bad_marks, [".hidden"]);
        assert!(victim.join("sub/precious").exists());
        assert!(!root.join("n1/job").exists());
        // The symlinks themselves are gone, their targets kept.
        assert!(fs::symlink_metadata(root.join("n1/linked")).is_err());
        assert!(fs::symlink_metadata(root.join("n1/.pmrun/job")).is_err());
        assert!(!root.join("n1/.slurm/42").exists());

        // A root reached through a symlink is refused, not followed.
        let t2 = tempfile::tempdir().unwrap();
        store(&victim, "n1", &["job"]);
        symlink(&victim, t2.path().join("store")).unwrap();
        let e = clean(&t2.path().join("store"), "n1", 42, uid()).unwrap_err();
        assert!(matches!(e, StoreError::NotADirectory(_)), "{e}");
        assert!(victim.join("n1/job").exists());
    }

    #[test]
    fn the_epilog_leaves_another_user_s_store_alone() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        store(&root, "n1", &["job"]);
        let e = clean(&root, "n1", 42, uid() + 1).unwrap_err();
        assert!(e.to_string().contains("not by the job's user"), "{e}");
        assert!(root.join("n1/job").exists());
    }

    #[test]
    fn bad_paths_and_node_names_are_refused() {
        for bad in ["relative", "/a/../b", "/a//b", "/"] {
            assert!(matches!(
                clean(Path::new(bad), "n1", 1, uid()),
                Err(StoreError::NotPlain(_))
            ));
        }
        for node in ["..", "a/b", ""] {
            assert!(matches!(
                prepare(Path::new("/tmp/x"), node, uid()),
                Err(StoreError::BadName { .. })
            ));
        }
    }

    #[test]
    fn the_prolog_makes_the_root_and_node_store_the_user_s_with_mode_0700() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("a/store");
        let node = prepare(&root, "n2", uid()).unwrap();
        assert_eq!(node, root.join("n2"));
        for d in [&root, &node] {
            let m = fs::metadata(d).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.uid(), uid());
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{}", d.display());
        }
        // An existing, looser root is tightened; a symlinked one refused.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&root, "n2", uid()).unwrap();
        assert_eq!(
            fs::metadata(&root).unwrap().permissions().mode() & 0o777,
            0o700
        );
        symlink(&root, t.path().join("link")).unwrap();
        assert!(matches!(
            prepare(&t.path().join("link"), "n2", uid()),
            Err(StoreError::NotADirectory(_))
        ));
    }

    #[test]
    fn as_the_job_s_user_the_prolog_makes_the_user_s_directories() {
        if !rustix::process::geteuid().is_root() {
            return; // Only root can take another user's ids.
        }
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let (nobody, nogroup) = (65534, 65534);
        let root = t.path().join("pmrun-65534");
        // Root's, mode 0700.
        let other = tempfile::tempdir().unwrap();
        {
            let _user = crate::sys::AsUser::new(nobody, nogroup).unwrap();
            prepare(&root, "n1", nobody).unwrap();
            // What the user could not do, the prolog cannot either.
            let e = prepare(&other.path().join("s"), "n1", nobody).unwrap_err();
            assert!(e.to_string().contains("Permission denied"), "{e}");
        }
        let m = fs::metadata(root.join("n1")).unwrap();
        assert_eq!((m.uid(), m.gid()), (nobody, nogroup));
        // Back to root's ids once the guard is gone.
        let back = t.path().join("mine");
        fs::create_dir(&back).unwrap();
        assert_eq!(fs::metadata(&back).unwrap().uid(), 0);
    }

    #[test]
    fn the_roots_are_the_default_and_the_given_one() {
        assert_eq!(roots(7, None), [PathBuf::from("/dev/shm/pmrun-7")]);
        assert_eq!(roots(7, Some("/dev/shm/pmrun-7/")).len(), 1);
        assert_eq!(
            roots(7, Some("/scratch/s/")),
            [
                PathBuf::from("/dev/shm/pmrun-7"),
                PathBuf::from("/scratch/s")
            ]
        );
    }
}
