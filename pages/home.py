"""Home: the model card, the layer table, and the selected image with its top-5."""
import pandas as pd
import streamlit as st

from analysis.core.predict import predict
from analysis.core.sizes import size_note
from dashboard import state
from dashboard.errors import guard
from dashboard.render import model_card_rows, model_view
from dashboard.text import plain
from dashboard.widgets import record_button, run_job

st.title("convlens — what does the network see?")
st.caption("Pick a model, an image and a data set in the sidebar; every page uses them.")

bundle = None
with guard("Model"):
    bundle = state.current_bundle()

if bundle is not None:
    left, right = st.columns([2, 3])
    with guard("Image"):                       # a bad image must not hide the model card
        image = state.current_image()
        with left:
            st.subheader("Image")
            seen = model_view(bundle.preprocess, image)
            grey = " grey" if bundle.preprocess.grayscale else ""
            st.image(seen, caption=f"{plain(state.image_ref().label)}: the {bundle.input_size}×{bundle.input_size}{grey} "
                     "crop the model sees", width=min(seen.shape[1], 448))
        with right:
            st.subheader("Prediction")
            pkey = ("predict", bundle.model_id, str(state.image_ref()), 5)
            pred = run_job(pkey, "Prediction", lambda p: predict(bundle, image, k=5), with_progress=False,
                           record=False)                      # a visit is no request: recorded on demand
            # one table with in-cell probability bars: a plotly chart here would make the browser
            # load and run plotly.js (4.7 MB) before the top-5 shows (docs/benchmarks.md, cold start)
            st.dataframe(pd.DataFrame(pred.rows()), hide_index=True, width="stretch",
                         column_config={"probability": st.column_config.ProgressColumn(
                             "probability", format="%.3f", min_value=0.0, max_value=1.0)})
            record_button("home", pred, pkey, "Prediction")

    st.subheader(f"Model card — {bundle.name}")
    st.markdown(bundle.description)
    pre = bundle.preprocess
    rows = model_card_rows(bundle.card()) + [
        ("Resize and crop", f"{pre.interpolation}, " + (f"shorter side to {pre.resize_size}" if pre.crop_mode == "center"
                            else f"squashed to {pre.resize_size}×{pre.resize_size}") + f", centre crop {pre.input_size}"),
        ("Channel order", "grey" if pre.grayscale else pre.channel_order.upper()),
        ("Preprocessing from", bundle.preprocess_note or "the model's source")]
    st.table(pd.DataFrame(rows, columns=["", "value"]).set_index(""))
    with guard("Input size"):
        if (note := size_note(bundle)) is not None:
            st.info(note)

    with st.expander("Layers (dotted names, output shapes from one dry forward)", expanded=False):
        with guard("Layers"):
            infos = state.current_layers()
            st.dataframe(pd.DataFrame([i.as_row() for i in infos]), hide_index=True, width="stretch")
            warn = [i for i in infos if i.warnings]
            if warn:
                st.warning(f"{len(warn)} layers have warnings for gradient methods (see the column).")
