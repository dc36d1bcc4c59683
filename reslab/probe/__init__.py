"""Signal propagation at initialisation: why a deep plain net fails, measured in seconds and without training.

The training curves show *that* deep plain nets degrade (He et al. 2015); the signal at initialisation shows *why*:
- forward and backward signal that shrinks or grows with depth (Poole et al. 2016 and Schoenholz et al. 2017,
  "Deep Information Propagation": a net trains only near the edge of chaos, where neither vanishes nor explodes);
- inputs whose representations collapse together with depth (Schoenholz et al.'s correlation map c(l); Martens et
  al. 2021, "Rapid training of deep neural networks without skip connections or normalization layers" (DKS): the
  C-map of the whole net, which must not send every correlation to 1); gradients of different inputs that become
  uncorrelated, like white noise, in deep plain nets and stay structured in residual ones (Balduzzi et al. 2017,
  "The Shattered Gradients Problem");
- an input-output Jacobian far from isometry (Pennington, Schoenholz & Ganguli 2017, "Resurrecting the sigmoid in
  deep learning through dynamical isometry": the spread of its singular values, not only their mean, decides how
  fast a deep net learns).

- `reslab.probe.result` (torch-free): the measured values, their JSON schema, their telemetry rows, the console table;
- `reslab.probe.measure`: the measurement itself, on a copy of the net, with every RNG state kept.
"""
