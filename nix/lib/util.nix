# Small helpers over builtins, so that the lane library needs neither nixpkgs nor its `lib`.
rec {
  # Quote a string for a POSIX shell: 'it'\''s'.
  escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";

  escapeShellArgs = args: builtins.concatStringsSep " " (map escapeShellArg args);

  optional = cond: x: if cond then [ x ] else [ ];

  optionalAttrs = cond: attrs: if cond then attrs else { };

  # The cargo arguments that select what a lane builds.
  cargoSelectionArgs =
    {
      packages,
      features,
      allFeatures,
      noDefaultFeatures,
    }:
    (if packages == [ ] then [ "--workspace" ] else builtins.concatMap (p: [ "--package" p ]) packages)
    ++ optional allFeatures "--all-features"
    ++ optional noDefaultFeatures "--no-default-features"
    ++ (if features == [ ] then [ ] else [ "--features" (builtins.concatStringsSep "," features) ]);

  # A `workspace-deps` payload: crane's `buildDepsOnly` running `command` (the cargo
  # invocation of the lane's build, on crane's dummy sources), with its manifest.
  depsPayload =
    {
      craneLib,
      common,
      command,
      extra ? { },
    }:
    craneLib.buildDepsOnly (
      withoutCallerHooks common
      // extra
      // {
        buildPhaseCargoCommand = command;
        doCheck = false;
        # The caller's install hooks are for the real sources, not crane's dummy ones (crane's
        # buildPackage leaves them out of its deps build too).
        postInstall = writeManifestCommand {
          schema_version = 1;
          kind = "workspace-deps";
        };
      }
    );

  # A caller's install hooks (`craneArgs.preInstall`/`postInstall`) are for the project's
  # own outputs: the deps build and the test archive leave them out.
  withoutCallerHooks =
    args:
    removeAttrs args [
      "preInstall"
      "postInstall"
    ];

  # crane's hooks that strip references to the Rust toolchain and to the vendored crate
  # sources from an output (as its `buildPackage` adds them), when the crane passed in has
  # them.
  referenceHooks =
    craneLib:
    builtins.concatMap (n: if craneLib ? ${n} then [ craneLib.${n} ] else [ ]) [
      "removeReferencesToRustToolchainHook"
      "removeReferencesToVendoredSourcesHook"
    ];

  # `share/pikaci/payload-manifest.json` of a payload whose content is known at evaluation.
  writeManifestCommand = manifest: ''
    mkdir -p "$out/share/pikaci"
    printf '%s\n' ${escapeShellArg (builtins.toJSON manifest)} > "$out/share/pikaci/payload-manifest.json"
  '';
}
