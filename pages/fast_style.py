"""Fast style transfer: train a feed-forward network for one style (Johnson et al. 2016,
instance normalisation), then stylise any image — or a camera frame — in one forward pass."""
import re
import time

import streamlit as st

from analysis.core.images import load_image
from analysis.core.models.loaders import select_device
from analysis.style.fast import (
    FAST_DEFAULTS,
    delete_network,
    import_network,
    list_networks,
    load_network,
    networks_dir,
    stylize,
    train_fast_style,
)
from dashboard import state
from dashboard.errors import guard
from dashboard.render import png_bytes
from dashboard.style_ui import extractor_picker, image_choice, losses_figure, run_training
from dashboard.text import plain

st.title("Fast style transfer")
st.caption("Gatys et al. optimise every image anew; Johnson et al. train a small image-to-image network once "
           "per style on the same perceptual loss, after which one forward pass stylises any image. Networks "
           "are saved on the server with their style image, settings and loss history.")


@st.cache_resource(show_spinner="Loading the network…", max_entries=4)
def _network(name: str, mtime: float):
    return load_network(name, select_device())


def _load(info):
    return _network(info.name, (info.path / "network.safetensors").stat().st_mtime)


t_train, t_saved, t_apply = st.tabs(["Train", "Saved networks", "Apply"], key="fs_tab", on_change="rerun")

with t_train, guard("Training"):
    bundle, infos = extractor_picker("fs")
    cpu = bundle.device.type == "cpu"
    c1, c2 = st.columns([1, 2])
    with c1:
        style_img, style_ref = image_choice("Style image", "fs_style", "immunohistochemistry", kinds_first="photo")
        if style_img is not None:
            st.image(style_img, caption="style", width=200)
    with c2:
        kind, _, what = (style_ref or "upload:").partition(":")
        label = {"gallery": what, "upload": f"upload-{what[:8]}", "sidebar": state.image_ref().label}.get(kind, "style")
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:24].strip("._-") or "style"
        default_name = f"{stem}-{'cpu' if cpu else 'gpu'}"
        name = st.text_input("Network name", default_name, key="fs_name", max_chars=64,
                             help="Letters, digits, '_', '-', '.'; the folder under the data directory.")
        content_src = st.radio("Content set", ["Gallery photos", "Sidebar data set"], horizontal=True,
                               key="fs_content", help="Random square crops (scale 1–1.5×) and horizontal flips.")
        a, b, c, e = st.columns(4)
        steps = int(a.number_input("steps (total)", 1, 100_000, 300 if cpu else 2000, key="fs_steps"))
        size = int(b.number_input("crop size (px)", 32, 1024, 128 if cpu else 256, 16, key="fs_size"))
        batch = int(c.number_input("batch", 1, 64, 4, key="fs_batch"))
        lr = float(e.number_input("learning rate", 1e-5, 1.0, FAST_DEFAULTS["lr"], format="%g", key="fs_lr"))
        width = int(a.number_input("network width", 4, 128, 16 if cpu else FAST_DEFAULTS["width"], 4, key="fs_width",
                                   help="Channels of the first layer (Johnson et al.: 32); 16 trains ~3× faster."))
        sw = float(b.number_input("style weight", 0.0, 1e6, FAST_DEFAULTS["style_weight"], format="%g", key="fs_sw"))
        cw = float(c.number_input("content weight", 0.0, 1e6, FAST_DEFAULTS["content_weight"], format="%g", key="fs_cw"))
        tv = float(e.number_input("TV weight", 0.0, 1.0, FAST_DEFAULTS["tv_weight"], format="%g", key="fs_tv"))
        ck = int(a.number_input("checkpoint every", 1, 100_000, FAST_DEFAULTS["checkpoint_every"], key="fs_ck"))
        pv = int(b.number_input("preview every", 1, 100_000, FAST_DEFAULTS["preview_every"], key="fs_pv"))
    existing = {i.name: i for i in list_networks()}
    have = existing.get(name)
    go_col, resume_col = st.columns([1, 3])
    train = go_col.button("Train", type="primary", key="fs_go", disabled=have is not None or style_img is None,
                          help="A network of this name exists: resume it, or choose another name." if have else None)
    resume = False
    if have is not None and have.error is None:
        resume = resume_col.button(f"Resume '{plain(name)}' (at step {have.steps}) up to {steps} steps", key="fs_resume",
                                   disabled=have.steps >= steps)
        resume_col.caption("Resuming uses the saved settings and style image; only the total steps change.")
    if train or resume:
        content = None if content_src == "Gallery photos" else state.current_dataset()
        started = time.time()
        result = run_training("fs_run", lambda: train_fast_style(
            bundle, None if resume else style_img, name, content=content, resume=resume, steps=steps,
            size=size, batch=batch, lr=lr, width=width, style_weight=sw, content_weight=cw, tv_weight=tv,
            checkpoint_every=ck, preview_every=pv, preview_image=state.current_image()))
        if result is not None:
            st.session_state["fs_last"] = result.name
            st.success(f"Trained '{plain(result.name)}' to step {result.steps} ({result.seconds:.0f} s this run); saved in "
                       f"{result.path}.")
    last = st.session_state.get("fs_last")
    if last:
        info = next((i for i in list_networks() if i.name == last), None)
        if info is not None and info.error is None:
            _, meta = load_network(info.name)
            l, r = st.columns([3, 2])
            l.plotly_chart(losses_figure(meta.get("history", {}), f"Loss history of '{info.name}'"), key="fs_hist")
            if info.preview_path.is_file():
                r.image(str(info.preview_path), caption=f"preview after {info.steps} steps", width="stretch")

with t_saved, guard("Saved networks"):
    nets = list_networks()
    st.caption(f"{len(nets)} network(s) in `{networks_dir()}`.")
    for info in nets:
        with st.container(border=True):
            if info.error:
                st.error(f"**{plain(info.name)}**: {info.error}")
                continue
            a, b, c = st.columns([1, 1, 2])
            if info.style_path.is_file():
                a.image(str(info.style_path), caption="style", width=140)
            if info.preview_path.is_file():
                b.image(str(info.preview_path), caption="preview", width=140)
            s = info.settings
            c.markdown(f"**{plain(info.name)}** · {info.steps} / {info.total_steps} steps"
                       + (f" · final loss {info.final_loss:.3g}" if info.final_loss is not None else ""))
            c.caption(f"width {s.get('width')}, {s.get('n_res')} residual blocks, crops {s.get('size')} px, "
                      f"batch {s.get('batch')}, style weight {s.get('style_weight')}, updated {info.created}")
            c.download_button("Network (.safetensors)", (info.path / "network.safetensors").read_bytes(),
                              f"{info.name}.safetensors", key=f"fs_dl_{info.name}")
            if c.checkbox("delete…", key=f"fs_del_ck_{info.name}"):
                if c.button(f"Delete '{plain(info.name)}'", key=f"fs_del_{info.name}"):
                    delete_network(info.name)
                    st.rerun()
    with st.expander("Import a network (.safetensors saved by convlens)"):
        up = st.file_uploader("Network file", type=["safetensors"], key="fs_import_file")
        iname = st.text_input("Name", "imported", key="fs_import_name")
        if st.button("Import", key="fs_import", disabled=up is None):
            info = import_network(up.getvalue(), iname, up.name)
            st.success(f"Imported '{plain(info.name)}'.")

with t_apply, guard("Apply"):
    usable = [i for i in list_networks() if i.error is None]
    if not usable:
        st.info("No trained network yet: train one on the first tab (a few minutes on the CPU at 128 px).")
    else:
        names = [i.name for i in usable]
        default = st.session_state.get("fs_last")
        pick = st.selectbox("Network", names, index=names.index(default) if default in names else 0, key="fs_apply_net")
        info = usable[names.index(pick)]
        src = st.radio("Image", ["Sidebar image", "Camera", "Upload"], horizontal=True, key="fs_apply_src")
        if src == "Sidebar image":
            image = state.current_image()
        elif src == "Camera":
            shot = st.camera_input("Take a picture", key="fs_camera")
            image = load_image(shot.getvalue(), name="camera frame") if shot is not None else None
        else:
            up = st.file_uploader("Your image", type=["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"],
                                  key="fs_apply_upload")
            image = load_image(up.getvalue(), name=up.name) if up is not None else None
        max_side = int(st.number_input("max side (px; larger images are scaled down first)", 32, 2048, 1024, 32,
                                       key="fs_apply_side"))
        if image is not None:
            net, meta = _load(info)
            t0 = time.perf_counter()
            out = stylize(net, image, max_side=max_side)
            ms = (time.perf_counter() - t0) * 1000
            l, r = st.columns(2)
            l.image(image, caption="input", width="stretch")
            r.image(out, caption=f"'{plain(info.name)}' · one forward pass · {out.shape[1]}×{out.shape[0]} px in {ms:.0f} ms",
                    width="stretch")
            d1, d2 = st.columns(2)
            d1.download_button("Stylised image (PNG)", png_bytes(out), f"{info.name}_stylised.png", key="fs_apply_png")
            d2.download_button("Network (.safetensors)", (info.path / "network.safetensors").read_bytes(),
                               f"{info.name}.safetensors", key="fs_apply_dl")
