//! Everything devserver does with git: finding the project, resolving revisions and branches,
//! and creating, inspecting and removing the linked worktree each agent works in.
//!
//! This module owns the only use of `git2` (libgit2) in devserver. No `git2` type appears in its
//! public API; callers see [`Project`], [`Worktree`], [`Safety`] and [`GitError`]. It does not
//! know about agents, ports, the registry or the terminal: it never prints, and it logs its
//! decisions through `tracing`. Callers serialise calls for one project (the registry lock does);
//! this module does not lock anything itself.
//!
//! # How it treats worktrees
//!
//! - A worktree is identified by its directory and by its admin entry
//!   `<common dir>/worktrees/<admin name>`. [`is_worktree_of`] checks both directions of that link
//!   itself, because libgit2's validation does not check that the `.git` file points back
//!   (libgit2 #5280).
//! - [`ensure_worktree`] either reuses a worktree exactly as it is, or creates one; a creation that
//!   fails at any step removes everything it made, including any partial structure libgit2 left
//!   (libgit2 #4977), so a retry starts clean.
//! - [`remove_worktree`] removes one entry, never runs a repository-wide prune, and refuses
//!   entries locked by anyone but devserver, so other agents' worktrees whose directories are
//!   missing for a while (an unmounted volume) keep their index, reflog and rebase state.
//!
//! # Bare repositories
//!
//! A bare repository's `HEAD` names a branch that nothing has checked out. [`checked_out_at`]
//! ignores it, and libgit2 1.9 (the version `git2` 0.20 builds) skips the bare `HEAD` in its own
//! "already checked out" check too, so that branch can be given to an agent's worktree (libgit2
//! #4977 was the bug where it could not). A test pins this behaviour.
//!
//! # Why some admin files are read directly
//!
//! The worktree admin files (`gitdir`, `HEAD`, `locked`, and a rebase's `head-name`) are read
//! here as plain files: libgit2 cannot open a worktree whose directory has gone, `git2`'s lock
//! status panics on a non-UTF-8 reason, and a missing directory must still count as "checked out"
//! the way git counts it.

use std::error::Error as StdError;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use git2::{
    BranchType, ErrorCode, Repository, Status, StatusOptions, SubmoduleUpdate,
    SubmoduleUpdateOptions, WorktreeAddOptions, WorktreePruneOptions,
};

/// The lock reason devserver writes; only entries locked with exactly this reason are removed.
pub const DEVSERVER_LOCK_REASON: &str = "devserver";

/// Environment variables that would point the `git` fallback at another repository.
const GIT_LOCATION_VARS: [&str; 5] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
];

/// What can go wrong in this module. Every message names the path, ref or branch at fault.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("`{}` is not inside a git repository", dir.display())]
    NotARepository { dir: PathBuf },

    #[error("`{rev}` does not name a commit in this repository")]
    UnknownRef { rev: String },

    #[error("branch `{branch}` does not exist")]
    UnknownBranch { branch: String },

    #[error("`{branch}` is not a valid branch name")]
    InvalidBranchName { branch: String },

    #[error("branch `{branch}` is already checked out at `{}`", at.display())]
    BranchCheckedOut { branch: String, at: PathBuf },

    #[error("`{}` already exists and is not a worktree of this repository", path.display())]
    PathOccupied { path: PathBuf },

    #[error("`{name}` is not a valid worktree name: it must be a single path component")]
    InvalidAdminName { name: String },

    #[error("worktree entry `{name}` already exists for `{}`", path.display())]
    AdminEntryExists { name: String, path: PathBuf },

    #[error("worktree entry `{name}` belongs to `{}`, not `{}`", recorded.display(), path.display())]
    WorktreeMismatch {
        name: String,
        path: PathBuf,
        recorded: PathBuf,
    },

    #[error("`{}` is not a worktree of this repository", path.display())]
    NotAWorktree { path: PathBuf },

    #[error(
        "worktree `{name}` is locked{}, and not by devserver",
        lock_reason_suffix(reason.as_deref())
    )]
    WorktreeLocked {
        name: String,
        reason: Option<String>,
    },

    #[error("failed to update submodules in `{}`: {detail}", path.display())]
    SubmoduleUpdate { path: PathBuf, detail: String },

    #[error("{action}: {detail}")]
    Libgit2 { action: String, detail: String },

    #[error(transparent)]
    Io(#[from] io::Error),
}

fn lock_reason_suffix(reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!(" (reason: `{reason}`)"),
        None => String::new(),
    }
}

/// Attaches what was being done to a libgit2 error, turning it into a [`GitError`].
trait Libgit2Context<T> {
    fn during(self, action: impl FnOnce() -> String) -> Result<T, GitError>;
}

impl<T> Libgit2Context<T> for Result<T, git2::Error> {
    fn during(self, action: impl FnOnce() -> String) -> Result<T, GitError> {
        self.map_err(|err| GitError::Libgit2 {
            action: action(),
            detail: err.message().to_owned(),
        })
    }
}

/// A git repository devserver works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The canonicalized common git dir: the same whether the project was discovered from the
    /// main checkout or from any linked worktree.
    pub id: PathBuf,
    /// The main worktree's directory, or the repository directory itself when it is bare.
    pub root: PathBuf,
    /// `root`'s directory name, without a trailing `.git` for a bare repository.
    pub name: String,
    pub is_bare: bool,
}

/// Which branch a new worktree gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchChoice {
    /// Create `name` from the revision `base`, or reuse `name` if it exists and is free.
    New { name: String, base: String },
    /// Use the local branch `name`, which must exist and be checked out nowhere.
    Existing { name: String },
}

/// A worktree devserver wants to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorktreeRequest {
    /// Name of the `<common dir>/worktrees/<name>` admin entry; one path component.
    pub admin_name: String,
    pub path: PathBuf,
    pub branch: BranchChoice,
}

/// The worktree [`ensure_worktree`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worktree {
    /// The absolute worktree directory.
    pub path: PathBuf,
    /// The checked-out branch, or the commit id when a reused worktree has a detached `HEAD`.
    pub branch: String,
    /// False when an existing worktree was reused.
    pub created: bool,
    /// True when this call created the branch.
    pub created_branch: bool,
}

/// What would be lost if a worktree were removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Safety {
    /// Staged or unstaged changes to tracked files (including dirty submodules).
    pub uncommitted: bool,
    /// How many paths have such changes; non-zero exactly when `uncommitted` is true.
    pub uncommitted_files: usize,
    /// Untracked files that are not ignored.
    pub untracked: bool,
    /// Commits on the worktree's branch (or detached `HEAD`) reachable from no other local branch.
    pub unique_commits: usize,
}

impl Safety {
    /// True when removing the worktree (and its branch) would lose nothing.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        !self.uncommitted && !self.untracked && self.unique_commits == 0
    }

    /// A short human description, such as
    /// `2 uncommitted changes, untracked files, 3 commits on no other branch`, or `clean`.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.uncommitted {
            parts.push(count(self.uncommitted_files.max(1), "uncommitted change"));
        }
        if self.untracked {
            parts.push("untracked files".to_owned());
        }
        if self.unique_commits > 0 {
            parts.push(format!(
                "{} on no other branch",
                count(self.unique_commits, "commit")
            ));
        }

        if parts.is_empty() {
            "clean".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

fn count(n: usize, noun: &str) -> String {
    let mut text = format!("{n} {noun}");
    if n != 1 {
        text.push('s');
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Discovery and revisions
// ---------------------------------------------------------------------------------------------

/// Finds the repository containing `dir` (searching upwards), whether `dir` is in the main
/// checkout, in a linked worktree, or in a bare repository.
///
/// # Errors
///
/// [`GitError::NotARepository`] when no repository contains `dir`.
pub fn discover(dir: &Path) -> Result<Project, GitError> {
    let found = Repository::discover(dir).map_err(|err| match err.code() {
        ErrorCode::NotFound => GitError::NotARepository {
            dir: dir.to_path_buf(),
        },
        _ => libgit2_error(
            format!("failed to open the repository at `{}`", dir.display()),
            &err,
        ),
    })?;
    let id = fs_err::canonicalize(found.commondir())?;

    // Open the common dir itself: from a linked worktree, that is the way to the main checkout.
    let main = Repository::open(&id).during(|| format!("failed to open `{}`", id.display()))?;
    let is_bare = main.is_bare();
    let root = match main.workdir() {
        Some(workdir) if !is_bare => fs_err::canonicalize(workdir)?,
        _ => id.clone(),
    };

    let name = project_name(&root, is_bare);
    tracing::debug!(id = %id.display(), root = %root.display(), is_bare, "discovered project");
    Ok(Project {
        id,
        root,
        name,
        is_bare,
    })
}

fn project_name(root: &Path, is_bare: bool) -> String {
    let dir_name = root
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    match dir_name.strip_suffix(".git") {
        Some(stem) if is_bare && !stem.is_empty() => stem.to_owned(),
        _ => dir_name,
    }
}

fn libgit2_error(action: String, err: &git2::Error) -> GitError {
    GitError::Libgit2 {
        action,
        detail: err.message().to_owned(),
    }
}

fn open(project: &Project) -> Result<Repository, GitError> {
    Repository::open(&project.id).during(|| format!("failed to open `{}`", project.id.display()))
}

/// Resolves `rev` (`HEAD`, a branch, a tag, an abbreviated id, `main~2`, ...) to a full commit id.
///
/// Revisions are resolved in the main repository, so `HEAD` is the main checkout's `HEAD` (the
/// bare repository's `HEAD` when bare) even when the project was discovered from a worktree.
///
/// # Errors
///
/// [`GitError::UnknownRef`] when `rev` names no commit.
pub fn resolve_commit(project: &Project, rev: &str) -> Result<String, GitError> {
    let repo = open(project)?;
    let commit = find_commit(&repo, rev)?;
    Ok(commit.id().to_string())
}

fn find_commit<'r>(repo: &'r Repository, rev: &str) -> Result<git2::Commit<'r>, GitError> {
    let unknown = |_| GitError::UnknownRef {
        rev: rev.to_owned(),
    };
    repo.revparse_single(rev)
        .map_err(unknown)?
        .peel_to_commit()
        .map_err(unknown)
}

/// True when the local branch `name` exists. An unreadable repository counts as "no".
#[must_use]
pub fn branch_exists(project: &Project, name: &str) -> bool {
    open(project).is_ok_and(|repo| repo.find_branch(name, BranchType::Local).is_ok())
}

/// Where `branch` is checked out (main checkout or any linked worktree), if anywhere.
///
/// Like git, this counts a linked worktree whose directory is missing, and a branch being rebased
/// in a worktree. It reports that worktree's recorded directory. A bare repository's `HEAD` does
/// not count: nothing has it checked out.
#[must_use]
pub fn checked_out_at(project: &Project, branch: &str) -> Option<PathBuf> {
    checked_out_except(project, branch, None)
}

/// Like [`checked_out_at`], ignoring the admin entry named `except`.
fn checked_out_except(project: &Project, branch: &str, except: Option<&str>) -> Option<PathBuf> {
    let refname = format!("refs/heads/{branch}");
    if !project.is_bare && admin_branches(&project.id).contains(&refname) {
        return Some(project.root.clone());
    }

    let entries = fs_err::read_dir(project.id.join("worktrees")).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|entry| except.is_none_or(|name| entry.file_name() != name))
        .map(|entry| entry.path())
        .find(|admin| admin_branches(admin).contains(&refname))
        .map(|admin| recorded_worktree(&admin).unwrap_or(admin))
}

/// The branch refs a git dir (main or admin entry) holds: its `HEAD`, and the branch of a rebase
/// in progress, which git also treats as checked out.
fn admin_branches(git_dir: &Path) -> Vec<String> {
    ["HEAD", "rebase-merge/head-name", "rebase-apply/head-name"]
        .iter()
        .filter_map(|file| fs_err::read_to_string(git_dir.join(file)).ok())
        .filter_map(|text| {
            let text = text.trim();
            let refname = text.strip_prefix("ref:").map_or(text, str::trim);
            refname
                .starts_with("refs/heads/")
                .then(|| refname.to_owned())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The worktree link: `<worktree>/.git` <-> `<common dir>/worktrees/<name>/gitdir`
// ---------------------------------------------------------------------------------------------

/// True when `path` exists, has a `.git` file pointing to an admin dir inside this project's
/// common dir, and that admin dir's `gitdir` points back at `path`.
///
/// This does not trust libgit2's `git_worktree_validate` alone: it did not check the working
/// directory at all before 1.2 (libgit2 #5280), and it still does not check the link back.
#[must_use]
pub fn is_worktree_of(project: &Project, path: &Path) -> bool {
    let Some(admin) = linked_admin_dir(path).and_then(|dir| fs_err::canonicalize(dir).ok()) else {
        return false;
    };
    if admin.parent() != Some(project.id.join("worktrees").as_path()) {
        return false;
    }

    let back = recorded_gitlink(&admin).and_then(|link| fs_err::canonicalize(link).ok());
    let own = fs_err::canonicalize(path.join(".git")).ok();
    back.is_some() && back == own
}

/// The admin dir a worktree's `.git` file names, resolved but not canonicalized.
fn linked_admin_dir(path: &Path) -> Option<PathBuf> {
    let text = fs_err::read_to_string(path.join(".git")).ok()?;
    let target = text.trim_end().strip_prefix("gitdir:")?.trim();
    Some(path.join(target))
}

/// The `<worktree>/.git` path an admin entry's `gitdir` file records.
fn recorded_gitlink(admin: &Path) -> Option<PathBuf> {
    let text = fs_err::read_to_string(admin.join("gitdir")).ok()?;
    let target = text.trim_end_matches(['\n', '\r']);
    (!target.is_empty()).then(|| admin.join(target))
}

/// The worktree directory an admin entry records.
fn recorded_worktree(admin: &Path) -> Option<PathBuf> {
    recorded_gitlink(admin)?.parent().map(Path::to_path_buf)
}

fn admin_dir(project: &Project, admin_name: &str) -> PathBuf {
    project.id.join("worktrees").join(admin_name)
}

fn ensure_admin_name_valid(name: &str) -> Result<(), GitError> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(only)), None) if only == OsStr::new(name) => Ok(()),
        _ => Err(GitError::InvalidAdminName {
            name: name.to_owned(),
        }),
    }
}

/// Resolves symlinks in as much of `path` as exists, so paths that are partly gone compare.
fn canonical_lossy(path: &Path) -> PathBuf {
    if let Ok(full) = fs_err::canonicalize(path) {
        return full;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => canonical_lossy(parent).join(name),
        _ => path.to_path_buf(),
    }
}

fn absolute(path: &Path) -> Result<PathBuf, GitError> {
    std::path::absolute(path).map_err(|err| {
        let message = format!("failed to make `{}` absolute: {err}", path.display());
        GitError::Io(io::Error::new(err.kind(), message))
    })
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

// ---------------------------------------------------------------------------------------------
// Creating worktrees
// ---------------------------------------------------------------------------------------------

/// Reuse `req.path` if it is already a worktree of this project (as it is, never reset or checked
/// out again; report its current branch). Otherwise create it there with its admin entry named
/// `req.admin_name`.
///
/// Branches: for [`BranchChoice::New`], the branch is created from `base` unless it already
/// exists and is checked out nowhere, in which case that branch is reused as it is. For
/// [`BranchChoice::Existing`], the branch must exist ([`GitError::UnknownBranch`]). Either way, a
/// branch checked out elsewhere is refused with [`GitError::BranchCheckedOut`].
///
/// Missing parent directories are created. Submodules are then initialised and updated
/// recursively with libgit2; if that fails (it has no network transports here), this runs
/// `git -C <path> submodule update --init --recursive` when `git` is on `PATH`, with a warning.
///
/// # Errors
///
/// If any step fails, everything this call created is removed again (the worktree directory, the
/// admin entry, the branch if it created it, and the parent directories it created) before the
/// error is returned. A `path` that exists but is not a worktree of this project is refused with
/// [`GitError::PathOccupied`] and nothing is touched; so is an admin name already in use
/// ([`GitError::AdminEntryExists`]).
pub fn ensure_worktree(project: &Project, req: &WorktreeRequest) -> Result<Worktree, GitError> {
    ensure_admin_name_valid(&req.admin_name)?;
    let path = absolute(&req.path)?;
    if is_worktree_of(project, &path) {
        return reuse_worktree(&path, &req.admin_name);
    }

    if exists(&path) {
        return Err(GitError::PathOccupied { path });
    }
    let admin = admin_dir(project, &req.admin_name);
    if exists(&admin) {
        return Err(GitError::AdminEntryExists {
            name: req.admin_name.clone(),
            path: recorded_worktree(&admin).unwrap_or(admin),
        });
    }

    let repo = open(project)?;
    let mut rollback = Rollback::new(&repo, path.clone(), admin);
    let worktree = create_worktree(&repo, project, req, &path, &mut rollback)?;
    rollback.disarm();
    Ok(worktree)
}

fn reuse_worktree(path: &Path, admin_name: &str) -> Result<Worktree, GitError> {
    let linked_name =
        linked_admin_dir(path).and_then(|admin| admin.file_name().map(OsStr::to_owned));
    if linked_name.as_deref() != Some(OsStr::new(admin_name)) {
        tracing::warn!(
            path = %path.display(),
            expected = admin_name,
            "reusing a worktree whose admin entry has another name; removing it by that name will be refused"
        );
    }

    let repo = Repository::open(path).during(|| format!("failed to open `{}`", path.display()))?;
    let branch = current_branch(&repo)
        .during(|| format!("failed to read `HEAD` of `{}`", path.display()))?;

    tracing::info!(path = %path.display(), branch, "reusing existing worktree as it is");
    Ok(Worktree {
        path: path.to_path_buf(),
        branch,
        created: false,
        created_branch: false,
    })
}

/// The branch checked out at `path` (or the commit id of a detached `HEAD`).
pub fn head_name(path: &Path) -> Option<String> {
    current_branch(&Repository::open(path).ok()?).ok()
}

/// The branch `HEAD` names (even if unborn), or the commit id of a detached `HEAD`.
fn current_branch(repo: &Repository) -> Result<String, git2::Error> {
    let head = repo.find_reference("HEAD")?;
    if let Some(target) = head.symbolic_target() {
        return Ok(target
            .strip_prefix("refs/heads/")
            .unwrap_or(target)
            .to_owned());
    }
    Ok(head.target().map(|id| id.to_string()).unwrap_or_default())
}

/// The creation steps; on error the caller's [`Rollback`] undoes what they recorded.
fn create_worktree(
    repo: &Repository,
    project: &Project,
    req: &WorktreeRequest,
    path: &Path,
    rollback: &mut Rollback<'_>,
) -> Result<Worktree, GitError> {
    let (branch, created_branch) = prepare_branch(repo, project, &req.branch)?;
    if created_branch {
        rollback.branch = Some(branch.clone());
    }

    rollback.parents = missing_ancestors(path);
    if let Some(deepest) = rollback.parents.last() {
        fs_err::create_dir_all(deepest)?;
    }

    // From here on, anything at the path or the admin entry is ours: both were checked absent,
    // and libgit2 can fail after creating them (libgit2 #4977).
    rollback.worktree_started = true;
    add_worktree(repo, project, &req.admin_name, path, &branch)?;

    update_submodules(path)?;

    tracing::info!(path = %path.display(), branch, created_branch, "created worktree");
    Ok(Worktree {
        path: path.to_path_buf(),
        branch,
        created: true,
        created_branch,
    })
}

/// Picks the branch for a new worktree; returns its name and whether it was created here.
fn prepare_branch(
    repo: &Repository,
    project: &Project,
    choice: &BranchChoice,
) -> Result<(String, bool), GitError> {
    let (name, base) = match choice {
        BranchChoice::New { name, base } => (name, Some(base)),
        BranchChoice::Existing { name } => (name, None),
    };
    if !git2::Branch::name_is_valid(name).unwrap_or(false) {
        return Err(GitError::InvalidBranchName {
            branch: name.clone(),
        });
    }

    if repo.find_branch(name, BranchType::Local).is_ok() {
        ensure_not_checked_out(project, name)?;
        if base.is_some() {
            tracing::info!(branch = %name, "branch already exists and is free; reusing it");
        }
        return Ok((name.clone(), false));
    }

    let Some(base) = base else {
        return Err(GitError::UnknownBranch {
            branch: name.clone(),
        });
    };
    create_branch(repo, name, base)?;
    Ok((name.clone(), true))
}

fn ensure_not_checked_out(project: &Project, branch: &str) -> Result<(), GitError> {
    match checked_out_at(project, branch) {
        Some(at) => Err(GitError::BranchCheckedOut {
            branch: branch.to_owned(),
            at,
        }),
        None => Ok(()),
    }
}

fn create_branch(repo: &Repository, name: &str, base: &str) -> Result<(), GitError> {
    let commit = find_commit(repo, base)?;
    repo.branch(name, &commit, false)
        .during(|| format!("failed to create branch `{name}` at `{base}`"))?;

    tracing::debug!(branch = name, base, commit = %commit.id(), "created branch");
    Ok(())
}

/// The ancestors of `path` that do not exist yet, outermost first.
fn missing_ancestors(path: &Path) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = path
        .ancestors()
        .skip(1)
        .take_while(|dir| !exists(dir))
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing
}

fn add_worktree(
    repo: &Repository,
    project: &Project,
    admin_name: &str,
    path: &Path,
    branch: &str,
) -> Result<(), GitError> {
    let action = || {
        format!(
            "failed to add worktree `{}` on branch `{branch}`",
            path.display()
        )
    };
    let reference = repo
        .find_branch(branch, BranchType::Local)
        .during(action)?
        .into_reference();

    // libgit2 creates `<common dir>/worktrees` with a plain mkdir and fails
    // when a concurrent add made it first; making it here avoids that race.
    let admins = repo.commondir().join("worktrees");
    fs_err::create_dir_all(&admins)?;

    let mut options = WorktreeAddOptions::new();
    options.reference(Some(&reference));
    for attempt in 1.. {
        let added = repo.worktree(admin_name, path, Some(&options));
        let Err(err) = added else {
            return Ok(());
        };
        // libgit2 1.9 takes another add's half-made admin entry for a
        // worktree that has the branch checked out (its worktree iteration
        // turns a failed lookup into a match). Our own check tells the two
        // apart; on a false alarm, clean up and try again shortly.
        let spurious = err.message().contains("already checked out")
            && attempt < ADD_ATTEMPTS
            && checked_out_except(project, branch, Some(admin_name)).is_none();
        if !spurious {
            return Err(err).during(action);
        }
        tracing::debug!(
            attempt,
            branch,
            "libgit2 reported a spurious checkout conflict; retrying"
        );
        remove_dir_logged(path);
        remove_dir_logged(&admins.join(admin_name));
        std::thread::sleep(std::time::Duration::from_millis(10 * attempt as u64));
    }
    Ok(())
}

/// How often a worktree add is retried after a spurious "already checked out".
const ADD_ATTEMPTS: usize = 20;

/// Undoes a half-finished [`ensure_worktree`] when dropped, unless disarmed.
///
/// It is a guard rather than a call on the error path so that a panic cleans up too.
struct Rollback<'r> {
    repo: &'r Repository,
    path: PathBuf,
    admin: PathBuf,
    /// Parent directories created, outermost first.
    parents: Vec<PathBuf>,
    /// The branch created by this call.
    branch: Option<String>,
    /// Whether libgit2 was asked to create the worktree (so the path and admin entry are ours).
    worktree_started: bool,
    armed: bool,
}

impl<'r> Rollback<'r> {
    fn new(repo: &'r Repository, path: PathBuf, admin: PathBuf) -> Self {
        Self {
            repo,
            path,
            admin,
            parents: Vec::new(),
            branch: None,
            worktree_started: false,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }

    fn undo(&self) {
        tracing::info!(path = %self.path.display(), "worktree creation failed; removing what it made");
        if self.worktree_started {
            remove_dir_logged(&self.path);
            remove_dir_logged(&self.admin);
        }

        if let Some(branch) = &self.branch {
            self.delete_created_branch(branch);
        }

        // `remove_dir` only removes empty directories, so nothing put there meanwhile is lost.
        for dir in self.parents.iter().rev().filter(|dir| exists(dir)) {
            if let Err(err) = fs_err::remove_dir(dir) {
                // Not empty: another agent's worktree is there now. Keep it.
                tracing::debug!(error = %err, "kept a parent directory created for a worktree");
                break;
            }
        }
    }

    /// Deletes the ref directly: the branch was made by this call, so no checks are needed.
    fn delete_created_branch(&self, branch: &str) {
        let refname = format!("refs/heads/{branch}");
        let result = self
            .repo
            .find_reference(&refname)
            .and_then(|mut reference| reference.delete());
        if let Err(err) = result {
            tracing::warn!(branch, error = %err.message(), "could not delete a branch created for a worktree");
        }
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.undo();
        }
    }
}

fn remove_dir_logged(dir: &Path) {
    if !exists(dir) {
        return;
    }
    if let Err(err) = fs_err::remove_dir_all(dir) {
        tracing::warn!(error = %err, "rollback could not remove a directory");
    }
}

// ---------------------------------------------------------------------------------------------
// Submodules
// ---------------------------------------------------------------------------------------------

/// Initialises and updates all submodules of the new worktree at `path`, recursively.
fn update_submodules(path: &Path) -> Result<(), GitError> {
    let fallback = which::which("git")
        .ok()
        .map(|git| fallback_command(&git, path));
    update_submodules_or_fall_back(path, fallback)
}

/// Tries libgit2 first; on failure clears what it left and runs `fallback`, if there is one.
///
/// libgit2 is built here without network transports, so any submodule with an `https` or `ssh`
/// URL takes the fallback.
fn update_submodules_or_fall_back(path: &Path, fallback: Option<Command>) -> Result<(), GitError> {
    let repo = Repository::open(path).during(|| format!("failed to open `{}`", path.display()))?;
    let Err(err) = update_submodules_with_libgit2(&repo) else {
        return Ok(());
    };

    let libgit2_detail = format!("libgit2: {}", err.message());
    let Some(command) = fallback else {
        return Err(GitError::SubmoduleUpdate {
            path: path.to_path_buf(),
            detail: format!("{libgit2_detail}; `git` is not on `PATH` to retry with"),
        });
    };

    tracing::warn!(
        path = %path.display(),
        error = %err.message(),
        "libgit2 could not update submodules; retrying with `git submodule update --init --recursive`"
    );
    reset_submodules(&repo)?;
    run_submodule_fallback(command, path).map_err(|detail| GitError::SubmoduleUpdate {
        path: path.to_path_buf(),
        detail: format!("{libgit2_detail}; `git submodule update` then failed: {detail}"),
    })
}

/// Removes what a failed libgit2 update left (half-made submodule repositories under the
/// worktree's git dir, and gitlinks in the submodule directories); `git` refuses to continue
/// from that state ("unable to find current revision"). Only called on a worktree this call has
/// just created, so nothing removed here is anyone's work.
fn reset_submodules(repo: &Repository) -> Result<(), GitError> {
    let modules = repo.path().join("modules");
    if exists(&modules) {
        fs_err::remove_dir_all(&modules)?;
    }

    let Some(workdir) = repo.workdir() else {
        return Ok(());
    };
    let submodules = repo
        .submodules()
        .during(|| format!("failed to list submodules of `{}`", workdir.display()))?;
    for submodule in submodules {
        let dir = workdir.join(submodule.path());
        if exists(&dir) {
            fs_err::remove_dir_all(&dir)?;
            fs_err::create_dir(&dir)?;
        }
    }
    Ok(())
}

fn update_submodules_with_libgit2(repo: &Repository) -> Result<(), git2::Error> {
    for mut submodule in repo.submodules()? {
        if submodule.update_strategy() == SubmoduleUpdate::None {
            tracing::debug!(
                name = submodule.name(),
                "submodule update is `none`; skipping"
            );
            continue;
        }

        let mut options = SubmoduleUpdateOptions::new();
        submodule.update(true, Some(&mut options))?;
        update_submodules_with_libgit2(&submodule.open()?)?;
    }
    Ok(())
}

/// `git -C <path> submodule update --init --recursive`, isolated from any `GIT_DIR` around us.
fn fallback_command(git: &Path, path: &Path) -> Command {
    let mut command = Command::new(git);
    command
        .arg("-C")
        .arg(path)
        .args(["submodule", "update", "--init", "--recursive"])
        .stdin(Stdio::null());
    for var in GIT_LOCATION_VARS {
        command.env_remove(var);
    }
    command
}

/// Runs the fallback; the error is git's stderr (or why it could not run).
fn run_submodule_fallback(mut command: Command, path: &Path) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|err| format!("could not run `git` in `{}`: {err}", path.display()))?;
    if output.status.success() {
        return Ok(());
    }

    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut detail = format!("`git` exited with {}", output.status);
    let last_line = stderr.lines().rev().find(|line| !line.trim().is_empty());
    if let Some(line) = last_line {
        let _ = write!(detail, ": {}", line.trim());
    }
    Err(detail)
}

// ---------------------------------------------------------------------------------------------
// Inspecting worktrees
// ---------------------------------------------------------------------------------------------

/// Reports what removing the worktree at `path` would lose.
///
/// Counts every tracked path with staged or unstaged changes (a submodule with changes inside
/// counts as one), untracked files that are not ignored, and commits reachable from the
/// worktree's `HEAD` but from no other local branch. Commits only on remote-tracking branches or
/// tags still count as unique.
///
/// # Errors
///
/// [`GitError::NotAWorktree`] when `path` is not a checkout of this project (the main checkout
/// is accepted).
pub fn inspect(project: &Project, path: &Path) -> Result<Safety, GitError> {
    let repo = open_checkout(project, path)?;

    let (uncommitted_files, untracked) = scan_status(&repo)
        .during(|| format!("failed to read the status of `{}`", path.display()))?;
    let unique_commits = count_unique_commits(&repo)
        .during(|| format!("failed to walk the history of `{}`", path.display()))?;

    Ok(Safety {
        uncommitted: uncommitted_files > 0,
        uncommitted_files,
        untracked,
        unique_commits,
    })
}

/// Opens `path` itself (no upward search) and checks it belongs to this project.
fn open_checkout(project: &Project, path: &Path) -> Result<Repository, GitError> {
    let not_a_worktree = || GitError::NotAWorktree {
        path: path.to_path_buf(),
    };
    let repo = Repository::open(path).map_err(|_| not_a_worktree())?;
    let common = fs_err::canonicalize(repo.commondir()).map_err(|_| not_a_worktree())?;
    if common != project.id || repo.is_bare() {
        return Err(not_a_worktree());
    }
    Ok(repo)
}

/// Returns the number of paths with uncommitted changes, and whether any file is untracked.
fn scan_status(repo: &Repository) -> Result<(usize, bool), git2::Error> {
    let mut options = StatusOptions::new();
    options
        .include_untracked(true)
        .include_ignored(false)
        .recurse_untracked_dirs(false)
        .exclude_submodules(false);

    let mut uncommitted = 0;
    let mut untracked = false;
    for entry in repo.statuses(Some(&mut options))?.iter() {
        let status = entry.status();
        untracked |= status.contains(Status::WT_NEW);
        if !(status - Status::WT_NEW - Status::IGNORED).is_empty() {
            uncommitted += 1;
        }
    }
    Ok((uncommitted, untracked))
}

fn count_unique_commits(repo: &Repository) -> Result<usize, git2::Error> {
    let head = match repo.head() {
        Ok(head) => head,
        Err(err) if err.code() == ErrorCode::UnbornBranch => return Ok(0),
        Err(err) => return Err(err),
    };
    let Some(tip) = head.target() else {
        return Ok(0);
    };

    let mut walk = repo.revwalk()?;
    walk.push(tip)?;
    let own_ref = head.is_branch().then(|| head.name()).flatten();
    for branch in repo.branches(Some(BranchType::Local))? {
        let reference = branch?.0.into_reference();
        if reference.name() == own_ref {
            continue;
        }
        if let Some(id) = reference.target() {
            walk.hide(id)?;
        }
    }

    walk.try_fold(0, |n, id| id.map(|_| n + 1))
}

// ---------------------------------------------------------------------------------------------
// Removing worktrees
// ---------------------------------------------------------------------------------------------

/// What the admin entry `admin_name` of a worktree whose directory is gone
/// still holds that pruning it would lose (C23): an operation in progress, or
/// staged changes recorded only in its index. `None` when it holds nothing.
pub fn admin_entry_work(project: &Project, admin_name: &str) -> Option<String> {
    let admin = admin_dir(project, admin_name);
    const IN_PROGRESS: [(&str, &str); 6] = [
        ("rebase-merge", "a rebase"),
        ("rebase-apply", "a rebase"),
        ("MERGE_HEAD", "a merge"),
        ("CHERRY_PICK_HEAD", "a cherry-pick"),
        ("REVERT_HEAD", "a revert"),
        ("BISECT_LOG", "a bisect"),
    ];
    if let Some((_, what)) = IN_PROGRESS
        .iter()
        .find(|(file, _)| exists(&admin.join(file)))
    {
        return Some(format!("{what} in progress"));
    }
    match staged_changes(project, &admin) {
        Ok(0) => None,
        Ok(n) => Some(format!("{} in its index", count(n, "staged change"))),
        Err(err) => Some(format!("an index devserver cannot read ({err})")),
    }
}

/// Staged changes in an admin entry's index against the commit its HEAD names.
fn staged_changes(project: &Project, admin: &Path) -> Result<usize, git2::Error> {
    let index_path = admin.join("index");
    if !exists(&index_path) {
        return Ok(0);
    }
    let repo = Repository::open(&project.id)?;
    let head = fs_err::read_to_string(admin.join("HEAD")).unwrap_or_default();
    let head = head.trim();
    let commit = match head.strip_prefix("ref: ") {
        Some(name) => repo.find_reference(name)?.peel_to_commit()?,
        None => repo.find_commit(git2::Oid::from_str(head)?)?,
    };
    let index = git2::Index::open(&index_path)?;
    let diff = repo.diff_tree_to_index(Some(&commit.tree()?), Some(&index), None)?;
    Ok(diff.deltas().len())
}

/// Removes one worktree devserver created: deletes its directory, then its admin entry
/// `admin_name` only (never a repository-wide prune; if libgit2's prune fails, the entry is deleted
/// directly), then deletes the local branch `delete_branch` if given, even if it has unique
/// commits: call [`inspect`] first.
///
/// Works when the directory is already gone (libgit2 #5280), and when the admin entry is already
/// gone; a repeated call succeeds.
///
/// # Errors
///
/// - [`GitError::WorktreeLocked`] when the entry is locked with a reason other than exactly
///   [`DEVSERVER_LOCK_REASON`]; nothing is touched.
/// - [`GitError::WorktreeMismatch`] when the entry records a different directory than `path`.
/// - [`GitError::NotAWorktree`] when `path` exists but its `.git` file does not name this entry.
/// - [`GitError::BranchCheckedOut`] when `delete_branch` is checked out somewhere (the worktree is
///   removed by then).
pub fn remove_worktree(
    project: &Project,
    admin_name: &str,
    path: &Path,
    delete_branch: Option<&str>,
) -> Result<(), GitError> {
    ensure_admin_name_valid(admin_name)?;
    let path = absolute(path)?;
    let admin = admin_dir(project, admin_name);
    if exists(&admin) {
        ensure_entry_removable(admin_name, &admin, &path)?;
    }

    remove_checkout(&admin, &path)?;
    prune_entry(project, admin_name, &admin)?;

    if let Some(branch) = delete_branch {
        delete_local_branch(project, branch)?;
    }
    Ok(())
}

fn ensure_entry_removable(admin_name: &str, admin: &Path, path: &Path) -> Result<(), GitError> {
    if let Some(reason) = lock_reason(admin) {
        if reason != DEVSERVER_LOCK_REASON {
            return Err(GitError::WorktreeLocked {
                name: admin_name.to_owned(),
                reason: (!reason.is_empty()).then_some(reason),
            });
        }
    }

    match recorded_worktree(admin) {
        Some(recorded) if canonical_lossy(&recorded) != canonical_lossy(path) => {
            Err(GitError::WorktreeMismatch {
                name: admin_name.to_owned(),
                path: path.to_path_buf(),
                recorded,
            })
        }
        _ => Ok(()),
    }
}

/// The reason an admin entry is locked with (empty when none is given), or `None` when unlocked.
///
/// Read directly: `git2`'s `is_locked` panics on a reason that is not UTF-8.
fn lock_reason(admin: &Path) -> Option<String> {
    let lock_file = admin.join("locked");
    if !exists(&lock_file) {
        return None;
    }
    let text = fs_err::read(&lock_file).unwrap_or_default();
    Some(String::from_utf8_lossy(&text).trim().to_owned())
}

/// Deletes the worktree directory, after checking its `.git` file names `admin`.
fn remove_checkout(admin: &Path, path: &Path) -> Result<(), GitError> {
    if !exists(path) {
        tracing::info!(path = %path.display(), "worktree directory is already gone");
        return Ok(());
    }

    let names_admin = linked_admin_dir(path)
        .is_some_and(|linked| canonical_lossy(&linked) == canonical_lossy(admin));
    if !names_admin {
        return Err(GitError::NotAWorktree {
            path: path.to_path_buf(),
        });
    }

    fs_err::remove_dir_all(path)?;
    tracing::debug!(path = %path.display(), "deleted worktree directory");
    Ok(())
}

/// Removes just this admin entry, through libgit2 if it can, else directly (libgit2 #5598).
fn prune_entry(project: &Project, admin_name: &str, admin: &Path) -> Result<(), GitError> {
    if !exists(admin) {
        return Ok(());
    }

    if let Err(err) = prune_with_libgit2(project, admin_name) {
        tracing::warn!(
            name = admin_name,
            error = %err,
            "libgit2 could not prune the worktree entry; deleting it directly"
        );
    }

    if exists(admin) {
        fs_err::remove_dir_all(admin)?;
    }
    tracing::debug!(name = admin_name, "removed worktree entry");
    Ok(())
}

fn prune_with_libgit2(project: &Project, admin_name: &str) -> Result<(), Box<dyn StdError>> {
    let repo = open(project)?;
    let worktree = repo.find_worktree(admin_name)?;

    // Lock and validity were checked by us; the directory is already deleted.
    let mut options = WorktreePruneOptions::new();
    options.valid(true).locked(true).working_tree(false);
    worktree.prune(Some(&mut options))?;
    Ok(())
}

fn delete_local_branch(project: &Project, branch: &str) -> Result<(), GitError> {
    let repo = open(project)?;
    let Ok(mut found) = repo.find_branch(branch, BranchType::Local) else {
        tracing::info!(branch, "branch is already gone");
        return Ok(());
    };

    ensure_not_checked_out(project, branch)?;
    found
        .delete()
        .during(|| format!("failed to delete branch `{branch}`"))?;
    tracing::debug!(branch, "deleted branch");
    Ok(())
}

#[cfg(test)]
// A failed unwrap is a failed test, which is what it should be here.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::io::Write as _;

    use tempfile::TempDir;

    /// A temp dir holding fixture repositories, built with the `git` CLI in an isolated
    /// environment (own HOME, no system or global config).
    struct Sandbox {
        dir: TempDir,
    }

    impl Sandbox {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.dir.path().join(relative)
        }

        fn command(&self, cwd: &Path, args: &[&str]) -> Command {
            let mut command = Command::new("git");
            command
                .current_dir(cwd)
                .args(args)
                .env("HOME", self.dir.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", self.path(".gitconfig"))
                .env("GIT_AUTHOR_NAME", "Test")
                .env("GIT_AUTHOR_EMAIL", "test@example.com")
                .env("GIT_COMMITTER_NAME", "Test")
                .env("GIT_COMMITTER_EMAIL", "test@example.com");
            for var in GIT_LOCATION_VARS {
                command.env_remove(var);
            }
            command
        }

        /// Runs git in `cwd`, feeding `stdin`; panics on failure; returns trimmed stdout.
        fn git_with_input(&self, cwd: &Path, args: &[&str], stdin: &str) -> String {
            let mut child = self
                .command(cwd, args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();

            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "git {args:?} failed: {stderr}");
            String::from_utf8(output.stdout).unwrap().trim().to_owned()
        }

        fn git(&self, cwd: &Path, args: &[&str]) -> String {
            self.git_with_input(cwd, args, "")
        }

        /// A repository on branch `main` with one commit of `README`.
        fn repo(&self, name: &str) -> PathBuf {
            let dir = self.path(name);
            fs_err::create_dir_all(&dir).unwrap();
            self.git(&dir, &["init", "-q", "-b", "main"]);
            self.commit(&dir, "README", "hello\n");
            dir
        }

        /// Writes `file`, commits it, and returns the new commit id.
        fn commit(&self, dir: &Path, file: &str, content: &str) -> String {
            fs_err::write(dir.join(file), content).unwrap();
            self.git(dir, &["add", file]);
            self.git(dir, &["commit", "-q", "-m", file]);
            self.git(dir, &["rev-parse", "HEAD"])
        }

        /// A branch `name` whose tip tree refers to a blob that does not exist, so any checkout
        /// of it fails after libgit2 has created the worktree structure.
        fn broken_branch(&self, dir: &Path, name: &str) {
            let entry = "100644 blob 0123456789abcdef0123456789abcdef01234567\tghost.txt\n";
            let tree = self.git_with_input(dir, &["mktree", "--missing"], entry);
            let commit = self.git(dir, &["commit-tree", &tree, "-p", "HEAD", "-m", "broken"]);
            self.git(dir, &["branch", name, &commit]);
        }

        /// `sup` with submodule `sub`, which itself has submodule `inner`.
        fn repo_with_nested_submodules(&self) -> PathBuf {
            let inner = self.repo("inner");
            let sub = self.repo("sub");
            self.add_submodule(&sub, &inner, "inner");
            let sup = self.repo("sup");
            self.add_submodule(&sup, &sub, "sub");
            sup
        }

        fn add_submodule(&self, dir: &Path, url: &Path, at: &str) {
            let url = url.to_str().unwrap();
            let add = [
                "-c",
                "protocol.file.allow=always",
                "submodule",
                "add",
                "-q",
                url,
                at,
            ];
            self.git(dir, &add);
            self.git(dir, &["commit", "-q", "-m", "add submodule"]);
        }
    }

    fn new_branch(name: &str, base: &str) -> BranchChoice {
        BranchChoice::New {
            name: name.to_owned(),
            base: base.to_owned(),
        }
    }

    fn existing(name: &str) -> BranchChoice {
        BranchChoice::Existing {
            name: name.to_owned(),
        }
    }

    fn request(admin_name: &str, path: PathBuf, branch: BranchChoice) -> WorktreeRequest {
        WorktreeRequest {
            admin_name: admin_name.to_owned(),
            path,
            branch,
        }
    }

    fn canonical(path: &Path) -> PathBuf {
        fs_err::canonicalize(path).unwrap()
    }

    fn admin_entries(project: &Project) -> Vec<String> {
        let Ok(entries) = fs_err::read_dir(project.id.join("worktrees")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn discover_agrees_from_root_subdir_and_linked_worktree() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        fs_err::create_dir_all(root.join("src/deep")).unwrap();
        sb.git(&root, &["worktree", "add", "-q", "-b", "side", "../linked"]);

        let from_root = discover(&root).unwrap();
        let from_subdir = discover(&root.join("src/deep")).unwrap();
        let from_worktree = discover(&sb.path("linked")).unwrap();

        assert_eq!(from_root, from_subdir);
        assert_eq!(from_root, from_worktree);
        assert_eq!(from_root.id, canonical(&root.join(".git")));
        assert_eq!(from_root.root, canonical(&root));
        assert_eq!(from_root.name, "proj");
        assert!(!from_root.is_bare);
    }

    #[test]
    fn discover_outside_any_repository_is_not_a_repository() {
        let sb = Sandbox::new();
        let dir = sb.path("plain");
        fs_err::create_dir_all(&dir).unwrap();

        let err = discover(&dir).unwrap_err();

        assert!(
            matches!(&err, GitError::NotARepository { dir: d } if *d == dir),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("`{}`", dir.display())));
    }

    #[test]
    fn resolve_commit_accepts_revisions_and_rejects_unknown_ones() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let first = sb.git(&root, &["rev-parse", "HEAD"]);
        sb.git(&root, &["tag", "-a", "v1", "-m", "v1"]);
        let second = sb.commit(&root, "two", "2\n");
        let project = discover(&root).unwrap();

        for (rev, expected) in [
            ("HEAD", &second),
            ("main", &second),
            ("v1", &first),
            (&first[..7], &first),
            ("main~1", &first),
        ] {
            assert_eq!(
                &resolve_commit(&project, rev).unwrap(),
                expected,
                "rev `{rev}`"
            );
        }

        let err = resolve_commit(&project, "no-such-ref").unwrap_err();
        assert!(matches!(&err, GitError::UnknownRef { rev } if rev == "no-such-ref"));
        assert_eq!(
            err.to_string(),
            "`no-such-ref` does not name a commit in this repository"
        );
    }

    #[test]
    fn new_worktree_gets_a_new_branch_from_head() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let path = sb.path("worktrees/a");

        let wt = ensure_worktree(
            &project,
            &request("a", path.clone(), new_branch("agent-a", "HEAD")),
        )
        .unwrap();

        assert_eq!(
            wt,
            Worktree {
                path: path.clone(),
                branch: "agent-a".into(),
                created: true,
                created_branch: true
            }
        );
        assert_eq!(
            fs_err::read_to_string(path.join("README")).unwrap(),
            "hello\n"
        );
        assert_eq!(sb.git(&path, &["status", "--porcelain"]), "");
        assert_eq!(
            sb.git(&path, &["symbolic-ref", "--short", "HEAD"]),
            "agent-a"
        );
        assert_eq!(
            resolve_commit(&project, "agent-a").unwrap(),
            resolve_commit(&project, "main").unwrap()
        );
        assert!(is_worktree_of(&project, &path));
        assert_eq!(
            checked_out_at(&project, "agent-a").map(|at| canonical(&at)),
            Some(canonical(&path))
        );
        assert!(sb.git(&root, &["worktree", "list"]).contains("[agent-a]"));
    }

    #[test]
    fn new_worktree_branches_from_the_given_base() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        sb.git(&root, &["switch", "-q", "-c", "feature"]);
        let feature = sb.commit(&root, "feature.txt", "f\n");
        sb.git(&root, &["switch", "-q", "main"]);
        let project = discover(&root).unwrap();
        let path = sb.path("b");

        let wt = ensure_worktree(
            &project,
            &request("b", path.clone(), new_branch("agent-b", "feature")),
        )
        .unwrap();

        assert!(wt.created_branch);
        assert_eq!(sb.git(&path, &["rev-parse", "HEAD"]), feature);
        assert!(path.join("feature.txt").exists());
    }

    #[test]
    fn new_branch_that_exists_and_is_free_is_reused_as_it_is() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let old = sb.git(&root, &["rev-parse", "HEAD"]);
        sb.git(&root, &["branch", "agent-a"]);
        sb.commit(&root, "later", "x\n");
        let project = discover(&root).unwrap();

        let wt = ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "main")),
        )
        .unwrap();

        assert!(wt.created && !wt.created_branch);
        assert_eq!(resolve_commit(&project, "agent-a").unwrap(), old);
    }

    #[test]
    fn reuse_leaves_the_worktree_exactly_as_it_is() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let req = request("a", sb.path("a"), new_branch("agent-a", "HEAD"));
        ensure_worktree(&project, &req).unwrap();
        fs_err::write(req.path.join("README"), "edited\n").unwrap();
        fs_err::write(req.path.join("scratch"), "new\n").unwrap();
        sb.git(&req.path, &["switch", "-q", "-c", "elsewhere"]);

        let wt = ensure_worktree(&project, &req).unwrap();

        assert_eq!(
            wt,
            Worktree {
                path: req.path.clone(),
                branch: "elsewhere".into(),
                created: false,
                created_branch: false
            }
        );
        assert_eq!(
            fs_err::read_to_string(req.path.join("README")).unwrap(),
            "edited\n"
        );
        assert!(req.path.join("scratch").exists());
        assert!(branch_exists(&project, "agent-a"));
    }

    #[test]
    fn existing_branch_checked_out_in_main_checkout_is_refused() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let path = sb.path("a");

        let err =
            ensure_worktree(&project, &request("a", path.clone(), existing("main"))).unwrap_err();

        match &err {
            GitError::BranchCheckedOut { branch, at } => {
                assert_eq!(branch, "main");
                assert_eq!(at, &project.root);
            }
            other => panic!("unexpected error: {other}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "branch `main` is already checked out at `{}`",
                project.root.display()
            )
        );
        assert!(!exists(&path));
        assert!(admin_entries(&project).is_empty());
    }

    #[test]
    fn branch_checked_out_in_another_worktree_is_refused_even_if_its_dir_is_gone() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let first = ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "HEAD")),
        )
        .unwrap();
        fs_err::remove_dir_all(&first.path).unwrap();

        let err = ensure_worktree(
            &project,
            &request("b", sb.path("b"), new_branch("agent-a", "HEAD")),
        )
        .unwrap_err();

        assert!(
            matches!(&err, GitError::BranchCheckedOut { at, .. } if *at == first.path),
            "{err}"
        );
        assert!(!exists(&sb.path("b")));
        assert_eq!(admin_entries(&project), ["a"]);
    }

    #[test]
    fn existing_branch_that_does_not_exist_is_unknown() {
        let sb = Sandbox::new();
        let project = discover(&sb.repo("proj")).unwrap();

        let err =
            ensure_worktree(&project, &request("a", sb.path("a"), existing("nope"))).unwrap_err();

        assert!(
            matches!(&err, GitError::UnknownBranch { branch } if branch == "nope"),
            "{err}"
        );
        assert!(!exists(&sb.path("a")));
    }

    #[test]
    fn occupied_path_is_refused_and_left_untouched() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let path = sb.path("occupied");
        fs_err::create_dir_all(&path).unwrap();
        fs_err::write(path.join("keep.txt"), "mine\n").unwrap();

        for target in [path.clone(), root.clone()] {
            let err = ensure_worktree(
                &project,
                &request("a", target.clone(), new_branch("agent-a", "HEAD")),
            )
            .unwrap_err();
            assert!(
                matches!(&err, GitError::PathOccupied { path: p } if *p == target),
                "{err}"
            );
        }

        let entries: Vec<_> = fs_err::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["keep.txt"]);
        assert!(!branch_exists(&project, "agent-a"));
        assert!(admin_entries(&project).is_empty());
    }

    #[test]
    fn admin_names_must_be_one_path_component() {
        let sb = Sandbox::new();
        let project = discover(&sb.repo("proj")).unwrap();

        for name in ["", ".", "..", "a/b", "../escape", "/abs"] {
            let err = ensure_worktree(
                &project,
                &request(name, sb.path("x"), new_branch("b", "HEAD")),
            )
            .unwrap_err();
            assert!(
                matches!(err, GitError::InvalidAdminName { .. }),
                "name `{name}`: {err}"
            );
            let err = remove_worktree(&project, name, &sb.path("x"), None).unwrap_err();
            assert!(
                matches!(err, GitError::InvalidAdminName { .. }),
                "name `{name}`: {err}"
            );
        }
    }

    #[test]
    fn failed_checkout_removes_everything_it_created() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        sb.broken_branch(&root, "broken");
        let project = discover(&root).unwrap();
        let path = sb.path("deep/nested/a");

        let err = ensure_worktree(
            &project,
            &request("a", path.clone(), new_branch("agent-a", "broken")),
        )
        .unwrap_err();

        assert!(matches!(err, GitError::Libgit2 { .. }), "{err}");
        assert!(!exists(&sb.path("deep")), "parent dirs left behind");
        assert!(admin_entries(&project).is_empty());
        assert!(!branch_exists(&project, "agent-a"));

        // A branch the call did not create survives its failure.
        let err =
            ensure_worktree(&project, &request("a", path.clone(), existing("broken"))).unwrap_err();
        assert!(matches!(err, GitError::Libgit2 { .. }), "{err}");
        assert!(branch_exists(&project, "broken"));
        assert!(!exists(&sb.path("deep")));

        // A retry starts clean.
        let wt =
            ensure_worktree(&project, &request("a", path, new_branch("agent-a", "main"))).unwrap();
        assert!(wt.created && wt.created_branch);
    }

    #[test]
    fn failed_submodule_update_removes_everything_it_created() {
        let sb = Sandbox::new();
        let sup = sb.repo_with_nested_submodules();
        fs_err::remove_dir_all(sb.path("sub")).unwrap();
        let project = discover(&sup).unwrap();
        let path = sb.path("wts/a");

        let err = ensure_worktree(&project, &request("a", path, new_branch("agent-a", "HEAD")))
            .unwrap_err();

        assert!(matches!(err, GitError::SubmoduleUpdate { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("libgit2:") && message.contains("`git submodule update`"),
            "{message}"
        );
        assert!(!exists(&sb.path("wts")));
        assert!(admin_entries(&project).is_empty());
        assert!(!branch_exists(&project, "agent-a"));
    }

    #[test]
    fn submodules_are_populated_recursively_in_a_new_worktree() {
        let sb = Sandbox::new();
        let sup = sb.repo_with_nested_submodules();
        let project = discover(&sup).unwrap();
        let path = sb.path("a");

        ensure_worktree(
            &project,
            &request("a", path.clone(), new_branch("agent-a", "HEAD")),
        )
        .unwrap();

        assert_eq!(
            fs_err::read_to_string(path.join("sub/README")).unwrap(),
            "hello\n"
        );
        assert_eq!(
            fs_err::read_to_string(path.join("sub/inner/README")).unwrap(),
            "hello\n"
        );
        assert!(project.id.join("worktrees/a/modules/sub").is_dir());
        assert!(inspect(&project, &path).unwrap().is_clean());

        remove_worktree(&project, "a", &path, Some("agent-a")).unwrap();
        assert!(admin_entries(&project).is_empty());
    }

    #[test]
    fn libgit2_submodule_failure_falls_back_to_git_from_a_clean_state() {
        let sb = Sandbox::new();
        let sub = sb.repo("sub");
        let sup = sb.repo("sup");
        sb.add_submodule(&sup, &sub, "sub");

        // A URL scheme libgit2 lacks (as `https` is in this build), which the fallback's own
        // config rewrites to the real path.
        sb.git(
            &sup,
            &[
                "config",
                "-f",
                ".gitmodules",
                "submodule.sub.url",
                "fake:sub",
            ],
        );
        sb.git(&sup, &["config", "submodule.sub.url", "fake:sub"]);
        sb.git(&sup, &["commit", "-q", "-am", "fake url"]);
        sb.git(&sup, &["worktree", "add", "-q", "-b", "plain", "../plain"]);
        let path = sb.path("plain");

        let err = update_submodules_or_fall_back(&path, None).unwrap_err();
        assert!(err.to_string().contains("`git` is not on `PATH`"), "{err}");

        // That attempt left half-made submodule state; the fallback must cope with it.
        let rewrite = format!("url.{}.insteadOf", sub.display());
        let mut command = fallback_command(&which::which("git").unwrap(), &path);
        command
            .env("GIT_CONFIG_COUNT", "2")
            .env("GIT_CONFIG_KEY_0", "protocol.file.allow")
            .env("GIT_CONFIG_VALUE_0", "always")
            .env("GIT_CONFIG_KEY_1", &rewrite)
            .env("GIT_CONFIG_VALUE_1", "fake:sub");
        update_submodules_or_fall_back(&path, Some(command)).unwrap();

        assert_eq!(
            fs_err::read_to_string(path.join("sub/README")).unwrap(),
            "hello\n"
        );
    }

    #[test]
    fn is_worktree_of_needs_the_link_in_both_directions() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let other = discover(&sb.repo("other")).unwrap();
        let project = discover(&root).unwrap();
        let wt = ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "HEAD")),
        )
        .unwrap();
        let copy = sb.path("copy");
        sb.git(
            sb.dir.path(),
            &["clone", "-q", "--no-checkout", "proj", "unused"],
        );
        let status = Command::new("cp")
            .arg("-r")
            .arg(&wt.path)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());

        assert!(is_worktree_of(&project, &wt.path));
        assert!(
            !is_worktree_of(&other, &wt.path),
            "another project's worktree"
        );
        assert!(
            !is_worktree_of(&project, &copy),
            "a copy whose admin entry points elsewhere"
        );
        assert!(!is_worktree_of(&project, &root), "the main checkout");
        assert!(!is_worktree_of(&project, &sb.path("missing")));
    }

    #[test]
    fn inspect_reports_what_removal_would_lose() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        sb.commit(&root, ".gitignore", "*.log\n");
        let project = discover(&root).unwrap();
        let path = ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "HEAD")),
        )
        .unwrap()
        .path;
        fs_err::write(path.join("build.log"), "ignored\n").unwrap();
        assert_eq!(inspect(&project, &path).unwrap(), Safety::default());
        assert_eq!(Safety::default().describe(), "clean");

        fs_err::write(path.join("README"), "edited\n").unwrap();
        fs_err::write(path.join("staged"), "s\n").unwrap();
        sb.git(&path, &["add", "staged"]);
        fs_err::write(path.join("stray"), "u\n").unwrap();
        let dirty = inspect(&project, &path).unwrap();
        assert_eq!(
            dirty,
            Safety {
                uncommitted: true,
                uncommitted_files: 2,
                untracked: true,
                unique_commits: 0
            }
        );
        assert_eq!(dirty.describe(), "2 uncommitted changes, untracked files");

        for file in ["one", "two", "three"] {
            sb.commit(&path, file, "c\n");
        }
        fs_err::remove_file(path.join("stray")).unwrap();
        sb.git(&path, &["checkout", "-q", "--", "."]);
        sb.git(&path, &["reset", "-q", "--hard"]);
        let ahead = inspect(&project, &path).unwrap();
        assert_eq!(ahead.unique_commits, 3);
        assert_eq!(ahead.describe(), "3 commits on no other branch");
        assert!(!ahead.is_clean());

        sb.git(&root, &["branch", "keep", "agent-a~1"]);
        assert_eq!(inspect(&project, &path).unwrap().unique_commits, 1);
    }

    #[test]
    fn inspect_counts_commits_on_a_detached_head() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let path = ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "HEAD")),
        )
        .unwrap()
        .path;
        sb.git(&path, &["checkout", "-q", "--detach"]);
        sb.commit(&path, "loose", "l\n");

        assert_eq!(inspect(&project, &path).unwrap().unique_commits, 1);
        assert!(matches!(
            inspect(&project, &sb.path("nowhere")),
            Err(GitError::NotAWorktree { .. })
        ));
    }

    #[test]
    fn remove_after_manual_delete_prunes_only_that_entry() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let a = ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "HEAD")),
        )
        .unwrap();
        let b = ensure_worktree(
            &project,
            &request("b", sb.path("b"), new_branch("agent-b", "HEAD")),
        )
        .unwrap();
        fs_err::write(b.path.join("README"), "b's work\n").unwrap();
        sb.git(&b.path, &["add", "README"]);
        sb.git(
            &root,
            &["worktree", "lock", "--reason", DEVSERVER_LOCK_REASON, "a"],
        );
        fs_err::remove_dir_all(&a.path).unwrap();
        fs_err::rename(&b.path, sb.path("b-away")).unwrap();

        remove_worktree(&project, "a", &a.path, Some("agent-a")).unwrap();

        assert_eq!(admin_entries(&project), ["b"]);
        assert!(!branch_exists(&project, "agent-a"));

        // The respawn gets a fresh worktree, with b's entry still dangling.
        let again = request("a", a.path.clone(), new_branch("agent-a", "HEAD"));
        assert!(ensure_worktree(&project, &again).unwrap().created);
        assert_eq!(admin_entries(&project), ["a", "b"]);
        remove_worktree(&project, "a", &a.path, Some("agent-a")).unwrap();

        fs_err::rename(sb.path("b-away"), &b.path).unwrap();
        assert!(is_worktree_of(&project, &b.path));
        assert_eq!(sb.git(&b.path, &["status", "--porcelain"]), "M  README");
        assert!(branch_exists(&project, "agent-b"));

        // Removing again is harmless.
        remove_worktree(&project, "a", &a.path, Some("agent-a")).unwrap();
    }

    #[test]
    fn remove_deletes_a_live_worktree_and_its_branch() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let wt = ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "HEAD")),
        )
        .unwrap();

        remove_worktree(&project, "a", &wt.path, Some("agent-a")).unwrap();

        assert!(!exists(&wt.path));
        assert!(admin_entries(&project).is_empty());
        assert!(!branch_exists(&project, "agent-a"));
        assert!(!sb.git(&root, &["worktree", "list"]).contains("agent-a"));
    }

    #[test]
    fn remove_refuses_locks_it_did_not_set() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let wt = ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "HEAD")),
        )
        .unwrap();

        for (args, reason) in [
            (
                &["worktree", "lock", "--reason", "on usb disk", "a"][..],
                Some("on usb disk"),
            ),
            (&["worktree", "lock", "a"][..], None),
        ] {
            sb.git(&root, args);
            let err = remove_worktree(&project, "a", &wt.path, Some("agent-a")).unwrap_err();
            match &err {
                GitError::WorktreeLocked {
                    name,
                    reason: found,
                } => {
                    assert_eq!(name, "a");
                    assert_eq!(found.as_deref(), reason);
                }
                other => panic!("unexpected error: {other}"),
            }
            assert!(wt.path.join("README").exists());
            assert!(branch_exists(&project, "agent-a"));
            sb.git(&root, &["worktree", "unlock", "a"]);
        }
    }

    #[test]
    fn remove_refuses_an_entry_recorded_for_another_path() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        let a = ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "HEAD")),
        )
        .unwrap();
        let b = ensure_worktree(
            &project,
            &request("b", sb.path("b"), new_branch("agent-b", "HEAD")),
        )
        .unwrap();

        let err = remove_worktree(&project, "a", &b.path, None).unwrap_err();
        assert!(matches!(err, GitError::WorktreeMismatch { .. }), "{err}");

        let err = remove_worktree(&project, "a", &a.path, Some("main")).unwrap_err();
        assert!(matches!(err, GitError::BranchCheckedOut { .. }), "{err}");
        assert!(b.path.join("README").exists());
        assert_eq!(admin_entries(&project), ["b"]);
    }

    #[test]
    fn bare_repository_gives_its_head_branch_to_a_worktree() {
        let sb = Sandbox::new();
        let src = sb.repo("src");
        sb.git(sb.dir.path(), &["clone", "-q", "--bare", "src", "proj.git"]);
        let bare = sb.path("proj.git");
        sb.broken_branch(&bare, "broken");
        let project = discover(&bare).unwrap();
        assert!(project.is_bare);
        assert_eq!(project.name, "proj");
        assert_eq!(
            (&project.id, &project.root),
            (&canonical(&bare), &canonical(&bare))
        );
        assert_eq!(checked_out_at(&project, "main"), None);

        // libgit2 #4977: the bare HEAD's branch must not count as checked out.
        let wt =
            ensure_worktree(&project, &request("a", sb.path("wts/a"), existing("main"))).unwrap();
        assert_eq!(wt.branch, "main");
        assert_eq!(
            fs_err::read_to_string(wt.path.join("README")).unwrap(),
            "hello\n"
        );
        assert_eq!(discover(&wt.path).unwrap(), project);
        assert!(inspect(&project, &wt.path).unwrap().is_clean());
        let err = ensure_worktree(&project, &request("b", sb.path("wts/b"), existing("main")))
            .unwrap_err();
        assert!(matches!(err, GitError::BranchCheckedOut { at, .. } if at == wt.path));

        // A branch libgit2 cannot check out leaves nothing behind.
        let err = ensure_worktree(
            &project,
            &request("c", sb.path("wts/c"), existing("broken")),
        )
        .unwrap_err();
        assert!(matches!(err, GitError::Libgit2 { .. }), "{err}");
        assert!(!exists(&sb.path("wts/c")));
        assert_eq!(admin_entries(&project), ["a"]);

        remove_worktree(&project, "a", &wt.path, None).unwrap();
        assert!(admin_entries(&project).is_empty());
        assert!(!exists(&wt.path));
        drop(src);
    }

    #[test]
    fn admin_entry_in_use_is_refused() {
        let sb = Sandbox::new();
        let root = sb.repo("proj");
        let project = discover(&root).unwrap();
        ensure_worktree(
            &project,
            &request("a", sb.path("a"), new_branch("agent-a", "HEAD")),
        )
        .unwrap();

        let err = ensure_worktree(
            &project,
            &request("a", sb.path("elsewhere"), new_branch("x", "HEAD")),
        )
        .unwrap_err();

        assert!(matches!(err, GitError::AdminEntryExists { .. }), "{err}");
        assert!(!exists(&sb.path("elsewhere")));
        assert!(!branch_exists(&project, "x"));
    }

    #[test]
    fn safety_describe_matches_the_documented_form() {
        let safety = Safety {
            uncommitted: true,
            uncommitted_files: 2,
            untracked: true,
            unique_commits: 3,
        };
        assert_eq!(
            safety.describe(),
            "2 uncommitted changes, untracked files, 3 commits on no other branch"
        );
        let one = Safety {
            uncommitted: true,
            uncommitted_files: 1,
            untracked: false,
            unique_commits: 1,
        };
        assert_eq!(
            one.describe(),
            "1 uncommitted change, 1 commit on no other branch"
        );
    }
}
