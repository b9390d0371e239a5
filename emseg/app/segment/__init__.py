"""From flows (or a video) to masks: the logic behind segment.py, one job per module.

A video goes through, frame pair by frame pair (memory stays flat with the video's length):

1. **decode → downscale → flow** (:mod:`.source`, a background thread): each frame is downscaled
   (area interpolation, ``emseg.core.video_io.fit_width``) to the width the model was trained on
   (``flow_width`` in its hyperparameters; ``--max_width`` overrides), and the flow of frame t → t+1 is
   computed there, with the flow t+1 → t for a per-pixel confidence (forward–backward consistency,
   ``emseg.video.flow_confidence``);
2. **network** (:mod:`.model`: the model and what runs it), in batches, on the flows resized to its
   input size (vectors not rescaled, as in training);
3. **temporal consistency** (:mod:`.stages`, ``emseg.video.temporal``): each frame's masks are matched to
   the previous frame's through the flow, then averaged with the neighbouring frames' carried onto it,
   weighted by the confidence;
4. **motion significance** (:mod:`.stages`, ``emseg.core.significance``): a foreground region is kept only
   if it moves unlike the background's fitted motion by more than the flow's own noise;
5. **binarise and write** (:mod:`.writers`): the probabilities are resized to the frame's size (refined
   with the frame as guide, ``emseg.video.refine``) and binarised (``exceptbiggest``): with the
   neighbouring frames' masks carried by the flow (``emseg.video.steady``: hysteresis, then a median over
   three frames; one frame later), or each frame alone with ``--no_steady``; then written, with the
   animation, by a writer thread.

:mod:`.options` holds the settings (their defaults and flags: ``emseg/core/hparams.py``), :mod:`.app`
wires the stages into ``segment_flows`` and ``segment_video``; segment.py parses its flags (reading only
:mod:`.options`) and starts decoding and flow (:class:`.source.VideoSource`) while torch and the model load.

Outputs in ``out``, per frame t with a flow: ``{name}_binary.png`` (0/255 at the frame's — or the
flow file's — own size); optional ``{name}_proba.npy`` (L × I × J float32 at the model's size, after
stages 3–4) and ``{name}_overlay.png`` (the frame, or the flow's colour coding, tinted by label
with the foreground outlined); ``segmentation.mp4`` (video: at the source's frame rate) or
``segmentation.gif`` (flow files) of the overlays; ``manifest.json`` (settings, counts, status);
with ``--save_flows``, ``flows.npz`` (every flow, float16, compressed).

This file imports nothing, so that ``segment.py --help`` (which reads :mod:`.options`) needs no torch.
"""
