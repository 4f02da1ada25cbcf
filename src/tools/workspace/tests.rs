//! Tests of the path jail and the walk.

use super::*;
use std::os::unix::fs::symlink;

/// A workspace with `a.txt`, `sub/b.txt`, and an outside dir with
/// `secret.txt`; returns (tempdir guard, canonical workspace, outside).
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ws = tmp.path().join("ws");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(ws.join("sub")).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(ws.join("a.txt"), "a").expect("write");
    std::fs::write(ws.join("sub/b.txt"), "b").expect("write");
    std::fs::write(outside.join("secret.txt"), "s").expect("write");
    let ws = ws.canonicalize().expect("canon");
    let outside = outside.canonicalize().expect("canon");
    (tmp, ws, outside)
}

fn existing(root: &Path, user: &str) -> Result<PathBuf, PathError> {
    resolve_existing(root, &relative_path(user)?, user)
}

fn for_write(root: &Path, user: &str) -> Result<PathBuf, PathError> {
    resolve_for_write(root, &relative_file_path(user)?, user)
}

#[test]
fn lexical_checks() {
    assert_eq!(relative_path("a/./b.txt"), Ok(PathBuf::from("a/b.txt")));
    assert_eq!(relative_path("."), Ok(PathBuf::new()));
    assert_eq!(relative_path(""), Ok(PathBuf::new()));
    assert_eq!(relative_path("dir/"), Ok(PathBuf::from("dir")));
    assert_eq!(relative_path("../x"), Err(PathError::ParentDir("../x".into())));
    assert_eq!(relative_path("a/../b"), Err(PathError::ParentDir("a/../b".into())));
    assert_eq!(
        relative_path("/etc/passwd"),
        Err(PathError::Absolute("/etc/passwd".into()))
    );
    assert_eq!(relative_path("a\0b"), Err(PathError::Nul("a\0b".into())));
    assert_eq!(relative_file_path("./"), Err(PathError::Empty));
    // Dots inside names are fine.
    assert_eq!(relative_path("..hidden/x..y"), Ok(PathBuf::from("..hidden/x..y")));
}

#[test]
fn internal_names_are_refused() {
    for user in [
        ".chatd-tmp-x",
        "sub/.chatd-tmp-abc/f.txt",
        "./.chatd-tmp-",
        "a/.chatd-tmp-1",
    ] {
        assert_eq!(relative_path(user), Err(PathError::Reserved(user.into())), "{user}");
    }
    let err: ToolError = PathError::Reserved("x".into()).into();
    assert!(matches!(err, ToolError::InvalidArguments(_)), "{err}");
    assert_eq!(
        relative_path("chatd-tmp-x/.chatd-tm"),
        Ok(PathBuf::from("chatd-tmp-x/.chatd-tm"))
    );
}

#[test]
fn find_workspace_does_not_create_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ctx = ToolContext::detached();
    assert_eq!(find_workspace(&ctx), Err(PathError::NoProject));
    ctx.workspace = Some(tmp.path().join("root/p1"));
    assert_eq!(find_workspace(&ctx), Ok(None));
    assert!(!tmp.path().join("root").exists());
    let made = open_workspace(&ctx).expect("opens");
    assert_eq!(find_workspace(&ctx), Ok(Some(made)));
}

#[test]
fn existing_paths_stay_inside() {
    let (_tmp, ws, outside) = setup();
    assert_eq!(existing(&ws, "a.txt"), Ok(ws.join("a.txt")));
    assert_eq!(existing(&ws, "./sub/b.txt"), Ok(ws.join("sub/b.txt")));
    assert_eq!(existing(&ws, "."), Ok(ws.clone()));
    assert_eq!(existing(&ws, "nope.txt"), Err(PathError::NotFound("nope.txt".into())));
    assert_eq!(
        existing(&ws, "a.txt/x"),
        Err(PathError::NotADirectory("a.txt/x".into()))
    );

    symlink(outside.join("secret.txt"), ws.join("leak")).expect("symlink");
    symlink(&outside, ws.join("leakdir")).expect("symlink");
    symlink(ws.join("a.txt"), ws.join("alias")).expect("symlink");
    symlink(ws.join("missing"), ws.join("dangling")).expect("symlink");
    assert_eq!(existing(&ws, "leak"), Err(PathError::Escapes("leak".into())));
    assert_eq!(
        existing(&ws, "leakdir/secret.txt"),
        Err(PathError::Escapes("leakdir/secret.txt".into()))
    );
    assert_eq!(existing(&ws, "leakdir"), Err(PathError::Escapes("leakdir".into())));
    // A link that stays inside resolves to its target.
    assert_eq!(existing(&ws, "alias"), Ok(ws.join("a.txt")));
    assert_eq!(existing(&ws, "dangling"), Err(PathError::BrokenLink("dangling".into())));
}

#[test]
fn write_targets_stay_inside() {
    let (_tmp, ws, outside) = setup();
    assert_eq!(for_write(&ws, "new.txt"), Ok(ws.join("new.txt")));
    assert_eq!(for_write(&ws, "x/y/z.txt"), Ok(ws.join("x/y/z.txt")));
    assert_eq!(for_write(&ws, "sub/b.txt"), Ok(ws.join("sub/b.txt")));
    assert_eq!(
        for_write(&ws, "a.txt/c"),
        Err(PathError::NotADirectory("a.txt/c".into()))
    );
    assert_eq!(for_write(&ws, ""), Err(PathError::Empty));

    symlink(&outside, ws.join("leakdir")).expect("symlink");
    symlink(outside.join("secret.txt"), ws.join("leak")).expect("symlink");
    symlink(outside.join("not-yet.txt"), ws.join("dangling-out")).expect("symlink");
    symlink(ws.join("sub"), ws.join("subalias")).expect("symlink");
    assert_eq!(
        for_write(&ws, "leakdir/new.txt"),
        Err(PathError::Escapes("leakdir/new.txt".into()))
    );
    assert_eq!(
        for_write(&ws, "leakdir/deep/new.txt"),
        Err(PathError::Escapes("leakdir/deep/new.txt".into()))
    );
    assert_eq!(for_write(&ws, "leak"), Err(PathError::Escapes("leak".into())));
    // A dangling link would create a file wherever it points: refused.
    assert_eq!(
        for_write(&ws, "dangling-out"),
        Err(PathError::BrokenLink("dangling-out".into()))
    );
    assert_eq!(for_write(&ws, "subalias/c.txt"), Ok(ws.join("sub/c.txt")));
}

#[test]
fn no_project_is_refused() {
    assert_eq!(open_workspace(&ToolContext::detached()), Err(PathError::NoProject));
    let err: ToolError = PathError::NoProject.into();
    assert!(err.to_string().starts_with("this conversation has no project"), "{err}");
}

#[test]
fn open_workspace_creates_the_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ctx = ToolContext::detached();
    ctx.workspace = Some(tmp.path().join("root/p1"));
    let ws = open_workspace(&ctx).expect("opens");
    assert!(ws.is_dir());
    assert!(ws.is_absolute());
}

#[test]
fn walk_lists_without_following_links() {
    let (_tmp, ws, outside) = setup();
    symlink(&outside, ws.join("leakdir")).expect("symlink");
    std::fs::write(ws.join(format!("{TEMP_PREFIX}x")), "t").expect("write");
    let (flat, cut) = walk(&ws, &ws, false, 100).expect("walk");
    assert!(!cut);
    let names: Vec<(&str, EntryKind)> = flat.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    assert_eq!(
        names,
        [
            ("a.txt", EntryKind::File),
            ("leakdir", EntryKind::Symlink),
            ("sub", EntryKind::Dir)
        ]
    );
    let (deep, _) = walk(&ws, &ws, true, 100).expect("walk");
    let names: Vec<&str> = deep.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["a.txt", "leakdir", "sub", "sub/b.txt"]);
    let (cut_list, cut) = walk(&ws, &ws, true, 2).expect("walk");
    assert!(cut);
    assert_eq!(cut_list.len(), 2);
    let files: Vec<String> = all_files(&ws).expect("files").into_iter().map(|e| e.path).collect();
    assert_eq!(files, ["a.txt", "sub/b.txt"]);
}
