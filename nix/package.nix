# The pikaci package: the binary, built with crane, wrapped so that the tools it runs are
# on its PATH: nix, bubblewrap, ssh and git. Incus is the host's (a daemon, see the NixOS
# module). They are appended to PATH rather than prepended: a host's own nix (matching its
# daemon) and bwrap (perhaps setuid) are preferred, and these fill the gaps.
{
  craneLib,
  src,
  makeWrapper,
  nix,
  bubblewrap,
  openssh,
  git,
}:
let
  cargoToml = builtins.fromTOML (builtins.readFile (src + "/Cargo.toml"));

  common = {
    inherit src;
    pname = "pikaci";
    inherit (cargoToml.package) version;
    strictDeps = true;
  };

  cargoArtifacts = craneLib.buildDepsOnly common;

  runtimePath = builtins.concatStringsSep ":" (
    map (p: "${p}/bin") [
      nix
      bubblewrap
      openssh
      git
    ]
  );
in
craneLib.buildPackage (
  common
  // {
    inherit cargoArtifacts;
    # The tests need real nix and a runtime, which a build sandbox lacks: the unit tests
    # run as the `unit` lane (checks.lane-unit), the integration tests outside Nix.
    doCheck = false;
    nativeBuildInputs = [ makeWrapper ];
    postInstall = ''
      wrapProgram "$out/bin/pikaci" --suffix PATH : ${runtimePath}
    '';
    passthru = {
      inherit cargoArtifacts runtimePath;
    };
    meta = {
      description = cargoToml.package.description or "pikaci";
      mainProgram = "pikaci";
      platforms = [
        "x86_64-linux"
        "aarch64-linux"
      ];
    };
  }
)
